//! `baton node`: the node API's command line (the only way into a node: there is no shell and
//! no SSH). The node is named by `--cluster NAME --node NODE` (a cluster of `baton cluster
//! create`) or by `--endpoint` with the CA and a client certificate.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use baton_node_api::proto::node_client::NodeClient;
use baton_node_api::proto::{
    ApplyConfigRequest, ApplyMode, KernelLogRequest, KubeconfigRequest, LogsRequest, PowerRequest,
    RestartServiceRequest, ServicesRequest, StatusRequest, VersionRequest,
};
use baton_node_api::{ClientCredentials, NODE_API_PORT, NodeTarget};
use clap::{Args, Subcommand};
use tonic::transport::Channel;

/// `baton node`: which node, how to reach it, and what to do.
#[derive(Debug, Args)]
pub struct NodeCli {
    /// A cluster made by `baton cluster create` (with --node): its credentials and network
    /// are used.
    #[arg(long, requires = "node", conflicts_with = "endpoint")]
    cluster: Option<String>,
    /// The node's name in --cluster.
    #[arg(long, requires = "cluster")]
    node: Option<String>,
    /// The node's address (`IP` or `IP:PORT`; port 50000 when left out), or
    /// `vsock:UDS_PATH` for a microVM's node reached through its VMM's vsock device (the Unix
    /// socket given to `baton vmm --vsock CID,UDS_PATH`).
    #[arg(long, required_unless_present = "cluster")]
    endpoint: Option<String>,
    /// The cluster CA certificate the node's certificate must chain to (PEM).
    #[arg(long, requires = "endpoint")]
    ca: Option<PathBuf>,
    /// A client certificate of the cluster CA in group system:masters (PEM).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Do not check the node's certificate: for a node in maintenance mode without a usable
    /// cluster CA (or a worker without machine.apiCertificate).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Connect from inside this network namespace (a pinned namespace's path).
    #[arg(long)]
    netns: Option<PathBuf>,
    #[command(subcommand)]
    verb: NodeVerb,
}

/// What to do with the node.
#[derive(Debug, Subcommand)]
pub enum NodeVerb {
    /// The node's build, name, role and whether it is in maintenance mode.
    Version,
    /// The services under init's supervisor.
    Services,
    /// Restart one service.
    Restart {
        /// The service (etcd, apiserver, scheduler, controller-manager, kubelet, proxy, dns).
        service: String,
    },
    /// A service's output.
    Logs {
        /// The service.
        service: String,
        /// Keep printing what it writes next.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u32>,
    },
    /// The kernel's log.
    Dmesg {
        /// Keep printing new records.
        #[arg(short, long)]
        follow: bool,
    },
    /// Boot phases, maintenance problems, memory, disks and addresses.
    Status,
    /// Stop every service in order and restart the node.
    Reboot,
    /// Stop every service in order and power the node off.
    Shutdown,
    /// Validate a machine configuration and apply it: now where that is safe, else at the
    /// next boot.
    ApplyConfig {
        /// The MachineConfig file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Only stage it for the next boot.
        #[arg(long)]
        staged: bool,
    },
    /// Print an admin kubeconfig (control-plane nodes).
    Kubeconfig,
}

/// Runs `baton node`.
pub async fn run(cli: NodeCli) -> anyhow::Result<()> {
    let (target, credentials) = resolve(&cli)?;
    let mut client = baton_node_api::connect(&target, &credentials)
        .await
        .map_err(|err| anyhow::anyhow!(baton_client::error_chain(&err)))?;
    call(&mut client, cli.verb)
        .await
        .map_err(|status| anyhow::anyhow!("{}: {}", code_name(status.code()), status.message()))
}

fn resolve(cli: &NodeCli) -> anyhow::Result<(NodeTarget, ClientCredentials)> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
    };
    let (mut target, mut credentials) = match (&cli.cluster, &cli.node, &cli.endpoint) {
        (Some(cluster), Some(node), _) => baton_cluster::node_access::node_access(cluster, node)?,
        (_, _, Some(endpoint)) => {
            let target = parse_endpoint(endpoint).with_context(|| {
                format!("--endpoint {endpoint}: not IP, IP:PORT or vsock:UDS_PATH")
            })?;
            let ca_pem = match (&cli.ca, cli.insecure) {
                (Some(path), _) => Some(read("--ca", path)?),
                (None, true) => None,
                (None, false) => anyhow::bail!("--ca is required with --endpoint (or --insecure)"),
            };
            (
                target,
                ClientCredentials {
                    ca_pem,
                    client: None,
                },
            )
        }
        _ => anyhow::bail!("name the node with --cluster and --node, or with --endpoint"),
    };
    if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
        credentials.client = Some((read("--cert", cert)?, read("--key", key)?));
    }
    if credentials.client.is_none() && !cli.insecure {
        anyhow::bail!(
            "--cert and --key are required with --endpoint: a client certificate of the cluster CA in group system:masters (only a node in maintenance mode without a usable CA answers --insecure calls without one)"
        );
    }
    if cli.insecure {
        credentials.ca_pem = None;
    }
    if let Some(path) = &cli.netns {
        match &mut target {
            NodeTarget::Tcp { netns, .. } => *netns = Some(path.clone()),
            NodeTarget::Vsock { .. } => {
                anyhow::bail!("--netns: a vsock endpoint is reached through its Unix socket")
            }
        }
    }
    Ok((target, credentials))
}

fn parse_endpoint(endpoint: &str) -> Option<NodeTarget> {
    if let Some(uds) = endpoint.strip_prefix("vsock:") {
        return (!uds.is_empty()).then(|| NodeTarget::Vsock {
            uds: PathBuf::from(uds),
            port: u32::from(NODE_API_PORT),
        });
    }
    let address = endpoint.parse::<SocketAddr>().ok().or_else(|| {
        Some(SocketAddr::new(
            endpoint.parse::<IpAddr>().ok()?,
            NODE_API_PORT,
        ))
    })?;
    Some(NodeTarget::Tcp {
        address,
        netns: None,
    })
}

/// gRPC's name for a status code, as grpcurl and talosctl print it.
fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Unavailable => "unavailable",
        _ => code.description(),
    }
}

async fn call(client: &mut NodeClient<Channel>, verb: NodeVerb) -> Result<(), tonic::Status> {
    match verb {
        NodeVerb::Version => {
            let v = client.version(VersionRequest {}).await?.into_inner();
            println!("Version:      {}", v.version);
            println!("Hostname:     {}", v.hostname);
            println!("Role:         {}", or_none(&v.role));
            println!("Environment:  {}", v.environment);
            println!("Maintenance:  {}", v.maintenance);
        }
        NodeVerb::Services => {
            let services = client.services(ServicesRequest {}).await?.into_inner();
            let rows: Vec<Vec<String>> = services
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.state.clone(),
                        s.ready.to_string(),
                        s.pid.map_or("-".into(), |p| p.to_string()),
                        s.restarts.to_string(),
                        or_none(&s.last_exit).to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["NAME", "STATE", "READY", "PID", "RESTARTS", "LAST EXIT"],
                    &rows
                )
            );
        }
        NodeVerb::Restart { service } => {
            client
                .restart_service(RestartServiceRequest {
                    name: service.clone(),
                })
                .await?;
            println!("service {service} restarted");
        }
        NodeVerb::Logs {
            service,
            follow,
            tail,
        } => {
            let mut lines = client
                .logs(LogsRequest {
                    service,
                    follow,
                    tail_lines: tail,
                })
                .await?
                .into_inner();
            while let Some(line) = lines.message().await? {
                println!("{}", line.line);
            }
        }
        NodeVerb::Dmesg { follow } => {
            let mut lines = client
                .kernel_log(KernelLogRequest { follow })
                .await?
                .into_inner();
            while let Some(line) = lines.message().await? {
                println!("{}", line.line);
            }
        }
        NodeVerb::Status => print!("{}", status_text(client).await?),
        NodeVerb::Reboot => {
            client.reboot(PowerRequest {}).await?;
            println!("the node is rebooting");
        }
        NodeVerb::Shutdown => {
            client.shutdown(PowerRequest {}).await?;
            println!("the node is powering off");
        }
        NodeVerb::ApplyConfig { file, staged } => {
            let config = std::fs::read_to_string(&file).map_err(|err| {
                tonic::Status::invalid_argument(format!("reading {}: {err}", file.display()))
            })?;
            let reply = client
                .apply_config(ApplyConfigRequest {
                    config,
                    mode: if staged {
                        ApplyMode::Staged
                    } else {
                        ApplyMode::Auto
                    } as i32,
                })
                .await?
                .into_inner();
            println!("{}: {}", reply.outcome, reply.message);
            if !reply.changed.is_empty() {
                println!("changed: {}", reply.changed.join(", "));
            }
        }
        NodeVerb::Kubeconfig => {
            let reply = client.kubeconfig(KubeconfigRequest {}).await?.into_inner();
            print!("{}", reply.kubeconfig);
        }
    }
    Ok(())
}

async fn status_text(client: &mut NodeClient<Channel>) -> Result<String, tonic::Status> {
    let s = client.status(StatusRequest {}).await?.into_inner();
    let mib = |bytes: u64| format!("{} MiB", bytes / (1024 * 1024));
    let mut out = String::new();
    out.push_str(&format!("Hostname:     {}\n", s.hostname));
    out.push_str(&format!("Role:         {}\n", or_none(&s.role)));
    out.push_str(&format!("Environment:  {}\n", s.environment));
    out.push_str(&format!("Maintenance:  {}\n", s.maintenance));
    out.push_str(&format!("Uptime:       {:.1}s\n", s.uptime_seconds));
    out.push_str(&format!("Config:       {}\n", or_none(&s.config_source)));
    if s.config_staged {
        out.push_str("              (a configuration is staged for the next boot)\n");
    }
    out.push_str(&format!(
        "Memory:       {} total, {} available\n",
        mib(s.memory_total_bytes),
        mib(s.memory_available_bytes)
    ));
    out.push_str(&format!(
        "Init memory:  {:.1} MiB resident, {:.1} MiB anonymous\n",
        s.init_memory_bytes as f64 / (1024.0 * 1024.0),
        s.init_anonymous_memory_bytes as f64 / (1024.0 * 1024.0)
    ));
    for problem in &s.problems {
        out.push_str(&format!("Problem:      {problem}\n"));
    }
    out.push('\n');
    let phases: Vec<Vec<String>> = s
        .phases
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.outcome.clone(),
                format!("{:.1}ms", p.duration_ms),
                p.detail.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["PHASE", "OUTCOME", "DURATION", "DETAIL"], &phases));
    out.push('\n');
    let addresses: Vec<Vec<String>> = s
        .addresses
        .iter()
        .map(|a| vec![a.interface.clone(), a.address.clone()])
        .collect();
    out.push_str(&table(&["INTERFACE", "ADDRESS"], &addresses));
    out.push('\n');
    let disks: Vec<Vec<String>> = s
        .disks
        .iter()
        .map(|d| {
            vec![
                d.mount_point.clone(),
                d.device.clone(),
                mib(d.total_bytes),
                mib(d.available_bytes),
            ]
        })
        .collect();
    out.push_str(&table(&["MOUNT", "DEVICE", "SIZE", "AVAILABLE"], &disks));
    Ok(out)
}

fn or_none(text: &str) -> &str {
    if text.is_empty() { "<none>" } else { text }
}

/// Columns padded to their widest cell and separated by three spaces, as kubectl prints.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}   "));
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_an_address_or_a_vsock_socket() {
        let tcp = |endpoint| match parse_endpoint(endpoint) {
            Some(NodeTarget::Tcp { address, netns }) => {
                assert!(netns.is_none());
                Some(address.to_string())
            }
            _ => None,
        };
        assert_eq!(tcp("10.0.0.2").as_deref(), Some("10.0.0.2:50000"));
        assert_eq!(tcp("10.0.0.2:6000").as_deref(), Some("10.0.0.2:6000"));
        match parse_endpoint("vsock:/run/vm1/v.sock") {
            Some(NodeTarget::Vsock { uds, port }) => {
                assert_eq!(uds, PathBuf::from("/run/vm1/v.sock"));
                assert_eq!(port, 50000);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_endpoint("vsock:").is_none());
        assert!(parse_endpoint("node-1").is_none());
    }
}
