//! Container probes (liveness, readiness, startup) as upstream's kubelet runs them: exec
//! through the runtime, httpGet and tcpSocket from inside the pod's network namespace. The
//! [`ProbeManager`] says which probe is due when and what its results mean; [`run_probe`]
//! runs one probe once. The pod worker runs each due probe as a task of its own and gets the
//! result back through a channel, so a slow probe never holds up the worker or another pod.
//!
//! Where network probes and hooks connect: pods have no routable IP yet (pod networking is a
//! later issue), so a probe connects from inside the pod's own network namespace
//! ([`netns`]), to the pod IP once pods have one and to 127.0.0.1, the pod's own loopback,
//! until then. An application listening on 0.0.0.0 or on 127.0.0.1 answers there, as it would
//! answer upstream's probes at the pod IP. hostNetwork pods are probed in the node's namespace
//! at the node's IP. An explicit `host` is used as given (an IP address, or `localhost`).
//!
//! gRPC probes are not implemented: such a probe errors ("probe errored") every period, and
//! errors count neither as success nor as failure, as upstream's do.

pub mod exec;
pub mod http;
pub mod manager;
pub mod netns;
pub mod tcp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use baton_runtime::{ContainerRuntime, Sandbox};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use manager::{DueProbe, ProbeKind, ProbeManager, ProbeTimings, RunResult, Seed, Verdict};

/// How often a probe that errored is tried again within one run (upstream's maxProbeRetries).
const MAX_TRIES: usize = 3;

/// Where probes and hooks of one container reach it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The runtime's id of the attempt (for exec).
    pub container_id: String,
    /// The container (named ports).
    pub container: Container,
    /// The pod's network namespace file; `None`: the node's namespace.
    pub netns: Option<PathBuf>,
    /// The host network probes and hooks connect to unless they name one.
    pub host: IpAddr,
}

impl Target {
    /// The target of attempt `container_id` of `container` in `pod`: inside the sandbox's
    /// network namespace at the pod IP, or 127.0.0.1 while the pod has none; in the node's
    /// namespace at the node's IP for hostNetwork pods.
    pub fn new(
        pod: &Pod,
        container: &Container,
        container_id: &str,
        sandbox: Option<&Sandbox>,
        pod_ip: Option<IpAddr>,
        node_ip: IpAddr,
    ) -> Self {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let (netns, host) = if host_network {
            (None, pod_ip.unwrap_or(node_ip))
        } else {
            (
                sandbox.and_then(|s| s.network.clone()),
                pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            )
        };
        Self {
            container_id: container_id.to_owned(),
            container: container.clone(),
            netns,
            host,
        }
    }
}

/// How one run of a probe went, with the message its event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutput {
    Success,
    /// A success with a warning (a redirect not followed).
    Warning(String),
    Failure(String),
    /// The probe could not be run at all.
    Error(String),
}

impl ProbeOutput {
    /// The result as the state machine counts it (a warning is a success).
    pub fn result(&self) -> RunResult {
        match self {
            ProbeOutput::Success | ProbeOutput::Warning(_) => RunResult::Success,
            ProbeOutput::Failure(_) => RunResult::Failure,
            ProbeOutput::Error(_) => RunResult::Error,
        }
    }
}

/// The User-Agent of probes (`purpose` "probe") and hooks ("lifecycle"): `kube-probe/1.33`.
pub fn user_agent(purpose: &str) -> String {
    let version = crate::KUBELET_VERSION.trim_start_matches('v');
    let minor: Vec<&str> = version.split('.').take(2).collect();
    format!("kube-{purpose}/{}", minor.join("."))
}

/// Runs `probe` once against `target` (an errored run is tried again up to 3 times).
pub async fn run_probe<R: ContainerRuntime>(
    runtime: &R,
    probe: &Probe,
    target: &Target,
) -> ProbeOutput {
    let mut output = ProbeOutput::Error(String::new());
    for _ in 0..MAX_TRIES {
        output = run_once(runtime, probe, target).await;
        if !matches!(output, ProbeOutput::Error(_)) {
            break;
        }
    }
    output
}

async fn run_once<R: ContainerRuntime>(runtime: &R, probe: &Probe, target: &Target) -> ProbeOutput {
    let timeout = ProbeTimings::of(probe).timeout;
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        return match exec::exec_in_container(runtime, &target.container_id, &command, Some(timeout))
            .await
        {
            Ok(output) => match output.exit_code {
                Some(0) => ProbeOutput::Success,
                Some(_) => ProbeOutput::Failure(output.combined()),
                None => ProbeOutput::Failure(format!("command {:?} timed out", command.join(" "))),
            },
            Err(err) => ProbeOutput::Error(baton_images::error_chain(&err)),
        };
    }
    if let Some(action) = &probe.http_get {
        return match http_request(action, &target.container, target.host) {
            Ok(request) => {
                http::probe(
                    target.netns.as_deref(),
                    &request,
                    &user_agent("probe"),
                    timeout,
                )
                .await
            }
            Err(message) => ProbeOutput::Error(message),
        };
    }
    if let Some(action) = &probe.tcp_socket {
        let host = match resolve_host(action.host.as_deref().unwrap_or_default(), target.host) {
            Ok(host) => host,
            Err(message) => return ProbeOutput::Error(message),
        };
        return match resolve_port(&action.port, &target.container) {
            Ok(port) => {
                tcp::probe(
                    target.netns.as_deref(),
                    SocketAddr::new(host, port),
                    timeout,
                )
                .await
            }
            Err(message) => ProbeOutput::Error(message),
        };
    }
    if probe.grpc.is_some() {
        return ProbeOutput::Error("gRPC probes are not supported by Baton's kubelet".into());
    }
    ProbeOutput::Error(format!(
        "missing probe handler for {}",
        target.container.name
    ))
}

/// The GET an httpGet action makes (probes and hooks): scheme HTTP or HTTPS, the host or else
/// `default_host`, the port by number or container port name, the path, the headers.
pub fn http_request(
    action: &HTTPGetAction,
    container: &Container,
    default_host: IpAddr,
) -> Result<http::HttpGet, String> {
    let scheme = action.scheme.as_deref().unwrap_or("HTTP");
    let tls = if scheme.eq_ignore_ascii_case("http") {
        false
    } else if scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Err(format!("unsupported scheme: {scheme:?} (HTTP or HTTPS)"));
    };
    let port = resolve_port(&action.port, container)?;
    let host_text = action.host.clone().unwrap_or_default();
    let addr = resolve_host(&host_text, default_host)?;
    let host = if host_text.is_empty() {
        addr.to_string()
    } else {
        host_text
    };
    let path = action.path.clone().unwrap_or_default();
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let headers = action
        .http_headers
        .iter()
        .flatten()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    Ok(http::HttpGet {
        tls,
        host,
        addr,
        port,
        path,
        headers,
    })
}

/// A port by number, by the name of one of the container's ports, or a number in a string,
/// with upstream's errors for the rest.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(number) => i64::from(*number),
        IntOrString::String(name) => {
            match container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
            {
                Some(found) => i64::from(found.container_port),
                None => name
                    .parse::<i64>()
                    .map_err(|_| format!("strconv.Atoi: parsing {name:?}: invalid syntax"))?,
            }
        }
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

/// An explicit host (an IP address or `localhost`), or `default` when none is given. Host
/// names are not resolved: the node has no resolver for the kubelet's own use yet.
pub fn resolve_host(host: &str, default: IpAddr) -> Result<IpAddr, String> {
    if host.is_empty() {
        return Ok(default);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("dial tcp: lookup {host}: host names are not resolved by Baton's kubelet; use an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPHeader, PodSpec};

    fn container() -> Container {
        Container {
            name: "main".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn ports_resolve_by_number_name_or_numeric_string() {
        let c = container();
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::String("81".into()), &c), Ok(81));
        assert_eq!(
            resolve_port(&IntOrString::String("web".into()), &c),
            Err("strconv.Atoi: parsing \"web\": invalid syntax".into())
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(70000), &c),
            Err("invalid port number: 70000".into())
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(0), &c),
            Err("invalid port number: 0".into())
        );
    }

    #[test]
    fn http_requests_take_host_path_and_headers_from_the_action() {
        let default: IpAddr = "127.0.0.1".parse().unwrap();
        let action = HTTPGetAction {
            path: Some("healthz".into()),
            port: IntOrString::String("http".into()),
            http_headers: Some(vec![HTTPHeader {
                name: "X-Probe".into(),
                value: "1".into(),
            }]),
            ..Default::default()
        };
        let request = http_request(&action, &container(), default).unwrap();
        assert_eq!(request.host, "127.0.0.1");
        assert_eq!((request.port, request.path.as_str()), (8080, "/healthz"));
        assert_eq!(request.headers, [("X-Probe".to_string(), "1".to_string())]);
        let action = HTTPGetAction {
            host: Some("10.1.2.3".into()),
            port: IntOrString::Int(80),
            ..Default::default()
        };
        let request = http_request(&action, &container(), default).unwrap();
        assert_eq!(request.addr, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(request.path, "/");
        assert!(!request.tls);
        let action = HTTPGetAction {
            scheme: Some("HTTPS".into()),
            port: IntOrString::Int(443),
            ..Default::default()
        };
        assert!(http_request(&action, &container(), default).unwrap().tls);
        let action = HTTPGetAction {
            scheme: Some("FTP".into()),
            port: IntOrString::Int(21),
            ..Default::default()
        };
        assert!(http_request(&action, &container(), default).is_err());
    }

    #[test]
    fn targets_are_the_pods_namespace_or_the_nodes() {
        let node_ip: IpAddr = "192.168.1.5".parse().unwrap();
        let sandbox = Sandbox {
            id: "uid".into(),
            network: Some("/run/netns/uid".into()),
            uts: None,
            ipc: None,
            pid: None,
            shm: "/shm".into(),
        };
        let mut pod = Pod::default();
        let target = Target::new(&pod, &container(), "c", Some(&sandbox), None, node_ip);
        assert_eq!(target.netns, Some(PathBuf::from("/run/netns/uid")));
        assert_eq!(target.host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        pod.spec = Some(PodSpec {
            host_network: Some(true),
            ..Default::default()
        });
        let target = Target::new(&pod, &container(), "c", Some(&sandbox), None, node_ip);
        assert_eq!((target.netns, target.host), (None, node_ip));
    }

    #[test]
    fn the_user_agent_names_the_minor_version() {
        assert_eq!(user_agent("probe"), "kube-probe/1.33");
        assert_eq!(user_agent("lifecycle"), "kube-lifecycle/1.33");
    }
}
