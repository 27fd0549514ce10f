//! The services a node runs, as data, from its machine configuration: etcd, the API server, the
//! scheduler and the controller manager on control-plane nodes; the kubelet, the proxy and
//! cluster DNS on every node.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::credentials::CredentialPaths;
use crate::machine_config::{MachineConfig, Role};
use crate::service::{Readiness, RestartPolicy, ServiceSpec};

/// The API server's port on every control-plane node.
pub const SECURE_PORT: u16 = 6443;
/// etcd's client port (loopback only).
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const ETCD_PEER_PORT: u16 = 2380;
/// The kubelet's image store, under the state directory.
pub const IMAGE_STORE: &str = "baton/images";
/// The label kubectl shows as a node's role, on control-plane nodes.
pub const CONTROL_PLANE_ROLE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// The proxy's health port.
pub const PROXY_HEALTHZ_PORT: u16 = 10256;

/// Where the node's programs and state are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLayout {
    /// Where the links named for each role (`apiserver`, `kubelet` ...) to the `baton` binary
    /// are: it answers to the name it is started as.
    pub bin_dir: PathBuf,
    /// The etcd binary.
    pub etcd: PathBuf,
    /// Persistent state (`/var/lib` on a node).
    pub state_dir: PathBuf,
    /// The node's credentials.
    pub credentials: CredentialPaths,
}

/// The node's services for `config`, whose address on the cluster network is `node_ip`.
pub fn node_services(
    config: &MachineConfig,
    node_ip: Ipv4Addr,
    layout: &NodeLayout,
) -> Vec<ServiceSpec> {
    let machine = &config.machine;
    let cluster = &config.cluster;
    let credentials = &layout.credentials;
    let role = |name: &str| layout.bin_dir.join(name);
    let path = |p: &Path| p.display().to_string();
    let hostname = &machine.hostname;
    let node_kubeconfig = format!("--kubeconfig={}", path(&credentials.node_kubeconfig));
    let mut services = Vec::new();
    let control_plane = machine.role == Role::ControlPlane;
    if control_plane {
        let initial_cluster = cluster
            .control_plane
            .iter()
            .map(|m| format!("{}=http://{}:{ETCD_PEER_PORT}", m.name, m.address))
            .collect::<Vec<_>>()
            .join(",");
        let client_url = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
        let peer_url = format!("http://{node_ip}:{ETCD_PEER_PORT}");
        let etcd_data = layout.state_dir.join("etcd");
        let mut etcd = ServiceSpec::new(
            "etcd",
            &layout.etcd,
            &[
                &format!("--name={hostname}"),
                &format!("--data-dir={}", path(&etcd_data)),
                &format!("--listen-client-urls={client_url}"),
                &format!("--advertise-client-urls={client_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster={initial_cluster}"),
                "--initial-cluster-state=new",
                "--log-level=warn",
            ],
        )
        .ready_when(Readiness::HttpGet {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, ETCD_CLIENT_PORT)),
            path: "/health".into(),
        });
        etcd.stop_timeout = Duration::from_secs(15);
        services.push(etcd);
        let mut apiserver_args = vec![
            format!("--etcd-servers={client_url}"),
            "--bind-address=0.0.0.0".to_string(),
            // The address the `kubernetes` Service sends pods to, one per control-plane node.
            format!("--advertise-address={node_ip}"),
            format!("--secure-port={SECURE_PORT}"),
            format!("--tls-cert-file={}", path(&credentials.apiserver_cert)),
            format!(
                "--tls-private-key-file={}",
                path(&credentials.apiserver_key)
            ),
            format!("--client-ca-file={}", path(&credentials.ca_cert)),
            format!("--service-cluster-ip-range={}", cluster.service_cidr),
            format!(
                "--kubelet-client-certificate={}",
                path(&credentials.kubelet_client_cert)
            ),
            format!(
                "--kubelet-client-key={}",
                path(&credentials.kubelet_client_key)
            ),
        ];
        if cluster.service_account_key.is_some() {
            apiserver_args.push(format!(
                "--service-account-signing-key-file={}",
                path(&credentials.service_account_key)
            ));
            apiserver_args.push(format!(
                "--service-account-key-file={}",
                path(&credentials.service_account_pub)
            ));
        }
        services.push(
            spec_from("apiserver", &role("apiserver"), &apiserver_args)
                .after(&["etcd"])
                .ready_when(Readiness::TcpConnect(SocketAddr::from((
                    Ipv4Addr::LOCALHOST,
                    SECURE_PORT,
                )))),
        );
        let admin = format!("--kubeconfig={}", path(&credentials.admin_kubeconfig));
        services.push(
            ServiceSpec::new("scheduler", role("scheduler"), &[&admin]).after(&["apiserver"]),
        );
        services.push(
            ServiceSpec::new(
                "controller-manager",
                role("controller-manager"),
                &[
                    &admin,
                    &format!("--cluster-cidr={}", cluster.pod_cidr),
                    &format!(
                        "--local-path-root={}",
                        path(&layout.state_dir.join("baton/local-path"))
                    ),
                    "--default-storage-class=standard",
                ],
            )
            .after(&["apiserver"]),
        );
    }
    let after_apiserver: &[&str] = if control_plane { &["apiserver"] } else { &[] };

    let mut kubelet_args = vec![
        node_kubeconfig.clone(),
        format!("--hostname-override={hostname}"),
        format!("--node-ip={node_ip}"),
        format!("--client-ca-file={}", path(&credentials.ca_cert)),
        format!("--cluster-dns={}", cluster.dns.service_ip),
        format!("--cluster-domain={}", cluster.dns.domain),
        format!(
            "--root-dir={}",
            path(&layout.state_dir.join("baton/kubelet"))
        ),
        format!(
            "--image-store={}",
            path(&layout.state_dir.join(IMAGE_STORE))
        ),
    ];
    if control_plane {
        kubelet_args.push(format!("--node-labels={CONTROL_PLANE_ROLE_LABEL}="));
    }
    kubelet_args.extend(
        machine
            .kubelet
            .insecure_registries
            .iter()
            .map(|r| format!("--insecure-registry={r}")),
    );
    kubelet_args.extend(machine.kubelet.extra_args.iter().cloned());
    services.push(spec_from("kubelet", &role("kubelet"), &kubelet_args).after(after_apiserver));

    let mut proxy_args = vec![
        node_kubeconfig.clone(),
        format!("--hostname-override={hostname}"),
        format!("--cluster-cidr={}", cluster.pod_cidr),
        format!("--proxy-mode={}", machine.proxy.mode),
        format!("--healthz-bind-address={node_ip}:{PROXY_HEALTHZ_PORT}"),
    ];
    proxy_args.extend(machine.proxy.extra_args.iter().cloned());
    services.push(spec_from("proxy", &role("proxy"), &proxy_args).after(after_apiserver));

    let mut dns_args = vec![
        node_kubeconfig,
        format!("--hostname-override={hostname}"),
        format!("--node-ip={node_ip}"),
        format!("--cluster-dns-ip={}", cluster.dns.service_ip),
        format!("--cluster-domain={}", cluster.dns.domain),
    ];
    let upstreams: Vec<SocketAddr> = if cluster.dns.upstreams.is_empty() {
        machine
            .network
            .nameservers
            .iter()
            .map(|ip| SocketAddr::new(*ip, 53))
            .collect()
    } else {
        cluster.dns.upstreams.clone()
    };
    dns_args.extend(upstreams.iter().map(|u| format!("--upstream={u}")));
    services.push(spec_from("dns", &role("dns"), &dns_args).after(after_apiserver));
    services
}

fn spec_from(name: &str, program: &Path, args: &[String]) -> ServiceSpec {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServiceSpec::new(name, program, &args).restart(RestartPolicy::Always)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine_config::tests_support::control_plane_config;
    use crate::service::start_order;

    fn layout() -> NodeLayout {
        NodeLayout {
            bin_dir: "/usr/bin".into(),
            etcd: "/usr/bin/etcd".into(),
            state_dir: "/var/lib".into(),
            credentials: CredentialPaths::under(Path::new("/etc/kubernetes")),
        }
    }

    #[test]
    fn a_control_plane_starts_etcd_then_the_api_server_then_the_rest() {
        let config = control_plane_config();
        let services = node_services(&config, "10.251.0.10".parse().unwrap(), &layout());
        let order: Vec<&str> = start_order(&services)
            .unwrap()
            .into_iter()
            .map(|i| services[i].name.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "etcd",
                "apiserver",
                "scheduler",
                "controller-manager",
                "kubelet",
                "proxy",
                "dns"
            ]
        );
        let etcd = &services[0];
        assert!(
            etcd.args
                .contains(&"--initial-cluster=cp-1=http://10.251.0.10:2380".to_string()),
            "{:?}",
            etcd.args
        );
        let apiserver = services.iter().find(|s| s.name == "apiserver").unwrap();
        assert!(
            apiserver.args.contains(
                &"--service-account-signing-key-file=/etc/kubernetes/pki/sa.key".to_string()
            ),
            "{:?}",
            apiserver.args
        );
        let kubelet = services.iter().find(|s| s.name == "kubelet").unwrap();
        assert_eq!(kubelet.depends_on, ["apiserver"]);
        assert!(kubelet.args.contains(&"--node-ip=10.251.0.10".to_string()));
    }

    #[test]
    fn a_worker_runs_only_the_node_services_without_local_dependencies() {
        let mut config = control_plane_config();
        config.machine.role = Role::Worker;
        config.machine.network.nameservers = vec!["10.251.0.1".parse().unwrap()];
        let services = node_services(&config, "10.251.0.11".parse().unwrap(), &layout());
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["kubelet", "proxy", "dns"]);
        assert!(services.iter().all(|s| s.depends_on.is_empty()));
        let dns = &services[2];
        assert!(
            dns.args.contains(&"--upstream=10.251.0.1:53".to_string()),
            "{:?}",
            dns.args
        );
    }
}
