//! The machine configuration: one versioned YAML document (`apiVersion: baton.dev/v1alpha1`,
//! `kind: MachineConfig`) that says what a node is. It is parsed and validated as a whole
//! before init applies any of it; docs/machine-config.md is its reference.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The `apiVersion` this build reads.
pub const API_VERSION: &str = "baton.dev/v1alpha1";
/// The `kind` of the document.
pub const KIND: &str = "MachineConfig";

/// A node's machine configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfig {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// This machine: its role, name, network and node settings.
    pub machine: Machine,
    /// The cluster it belongs to.
    pub cluster: Cluster,
}

/// What a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// etcd, the API server, the scheduler and the controller manager, and everything a worker
    /// runs.
    ControlPlane,
    /// The kubelet, the proxy and cluster DNS.
    Worker,
}

impl Role {
    /// The name used in the configuration and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

/// The machine section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    /// `control-plane` or `worker`.
    pub role: Role,
    /// The hostname, also the Node's name.
    pub hostname: String,
    /// Interfaces, routes and resolvers.
    #[serde(default)]
    pub network: Network,
    /// This node's client identity for the API server (kubelet, proxy, DNS): a certificate for
    /// `system:node:<hostname>` in `system:nodes` and its key. Control-plane nodes may leave it
    /// out: they issue their own from the cluster CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<CertificateAndKey>,
    /// The node API's serving certificate (for the hostname and the node's addresses) and its
    /// key. Control-plane nodes may leave it out: they issue their own from the cluster CA; a
    /// worker without one serves a self-signed certificate that clients cannot verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_certificate: Option<CertificateAndKey>,
    /// Block device for persistent state (/var); tmpfs when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disk: Option<String>,
    /// Extra sysctls, by dotted name, applied after Baton's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Extra kernel command-line arguments for the next boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// Kubelet settings.
    #[serde(default)]
    pub kubelet: Kubelet,
    /// Proxy settings.
    #[serde(default)]
    pub proxy: Proxy,
    /// Where the clock comes from.
    #[serde(default, skip_serializing_if = "Time::is_empty")]
    pub time: Time,
}

/// Time settings of the machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Time {
    /// NTP servers (IP addresses), asked in order: the clock is set from the first that
    /// answers at boot, and checked against them afterwards. None: the kernel keeps the clock.
    #[serde(default)]
    pub servers: Vec<std::net::IpAddr>,
}

impl Time {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

/// Network settings of the machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// Interfaces to configure.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Resolvers written to /etc/resolv.conf (and used by the DNS addon as upstreams).
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
}

/// One interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interface {
    /// The kernel's name for it (`eth0`).
    pub name: String,
    /// Static addresses with their prefix (`10.0.0.10/24`).
    #[serde(default)]
    pub addresses: Vec<Ipv4Net>,
    /// Static routes out of this interface.
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
    /// The MTU; the kernel's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Ask a DHCPv4 server for the address, the router and the resolvers.
    #[serde(default)]
    pub dhcp: bool,
}

/// A static route.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticRoute {
    /// The destination (`0.0.0.0/0` for the default route).
    pub to: Ipv4Net,
    /// The gateway.
    pub via: Ipv4Addr,
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateAndKey {
    /// The certificate, PEM.
    pub cert: String,
    /// The private key, PEM.
    pub key: String,
}

impl std::fmt::Debug for CertificateAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAndKey")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Kubelet settings of the machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kubelet {
    /// Registries the kubelet may pull from over plain HTTP (`host:port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// More kubelet flags (`--max-pods=50`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

/// Proxy settings of the machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Proxy {
    /// `nftables` (the default), `iptables` or `ipvs`.
    #[serde(default = "default_proxy_mode")]
    pub mode: String,
    /// More proxy flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            mode: default_proxy_mode(),
            extra_args: Vec::new(),
        }
    }
}

fn default_proxy_mode() -> String {
    "nftables".into()
}

/// The cluster section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    /// The API server every node talks to (`https://HOST:PORT`).
    pub endpoint: String,
    /// The cluster CA: its certificate, and on control-plane nodes its key.
    pub ca: ClusterCa,
    /// Control plane only: the key (PEM, PKCS#8, ECDSA P-256) that signs service account
    /// tokens, the same on every control-plane node. Without it the API server issues no
    /// tokens and pods get no API token volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key: Option<String>,
    /// The control-plane members (etcd peers), by name and address.
    #[serde(default)]
    pub control_plane: Vec<ControlPlaneMember>,
    /// The pods' address range, split into one CIDR per node.
    #[serde(default = "default_pod_cidr", rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    /// The Services' address range.
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    pub service_cidr: Ipv4Net,
    /// Cluster DNS.
    #[serde(default)]
    pub dns: ClusterDns,
}

/// The cluster CA as the machine configuration carries it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterCa {
    /// The CA certificate, PEM.
    pub cert: String,
    /// The CA key, PEM: required on control-plane nodes, absent on workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A control-plane member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneMember {
    /// Its hostname.
    pub name: String,
    /// Its address on the cluster network.
    pub address: Ipv4Addr,
}

/// Cluster DNS settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterDns {
    /// The kube-dns Service's ClusterIP.
    #[serde(default = "default_cluster_dns_ip", rename = "serviceIP")]
    pub service_ip: Ipv4Addr,
    /// The cluster domain.
    #[serde(default = "default_cluster_domain")]
    pub domain: String,
    /// Where other names are forwarded; the machine's nameservers (port 53) when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<SocketAddr>,
}

impl Default for ClusterDns {
    fn default() -> Self {
        ClusterDns {
            service_ip: default_cluster_dns_ip(),
            domain: default_cluster_domain(),
            upstreams: Vec::new(),
        }
    }
}

fn default_pod_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("a valid prefix")
}

fn default_service_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).expect("a valid prefix")
}

fn default_cluster_dns_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, 10)
}

fn default_cluster_domain() -> String {
    "cluster.local".into()
}

/// One problem with a machine configuration, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path (`machine.network.interfaces[0].name`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a machine configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadMachineConfigError {
    /// The document is not YAML of the expected shape.
    #[error("machine configuration {source_name} is malformed")]
    Malformed {
        /// Where it came from.
        source_name: String,
        /// The parser's error.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// The document parsed but some fields are invalid.
    #[error("machine configuration {source_name} is invalid: {}", join(.errors))]
    Invalid {
        /// Where it came from.
        source_name: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

impl LoadMachineConfigError {
    /// Every problem, one per line, for the console and the node API.
    pub fn problems(&self) -> Vec<String> {
        match self {
            LoadMachineConfigError::Malformed { source, .. } => vec![source.to_string()],
            LoadMachineConfigError::Invalid { errors, .. } => {
                errors.iter().map(ToString::to_string).collect()
            }
        }
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl MachineConfig {
    /// Parses and validates a document; `source_name` (a path, "the kernel command line" ...)
    /// names it in errors.
    pub fn parse(yaml: &str, source_name: &str) -> Result<Self, LoadMachineConfigError> {
        let config: MachineConfig =
            serde_saphyr::from_str(yaml).map_err(|source| LoadMachineConfigError::Malformed {
                source_name: source_name.to_string(),
                source: Box::new(source),
            })?;
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(LoadMachineConfigError::Invalid {
                source_name: source_name.to_string(),
                errors,
            })
        }
    }

    /// The document as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a machine configuration serializes")
    }

    /// Every problem with the configuration; empty when it is valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(FieldError {
                field: field.to_string(),
                message,
            })
        };
        if self.api_version != API_VERSION {
            fail(
                "apiVersion",
                format!("must be {API_VERSION}, not {:?}", self.api_version),
            );
        }
        if self.kind != KIND {
            fail("kind", format!("must be {KIND}, not {:?}", self.kind));
        }
        let machine = &self.machine;
        if let Err(message) = check_dns_label(&machine.hostname) {
            fail("machine.hostname", message);
        }
        for (i, interface) in machine.network.interfaces.iter().enumerate() {
            let at = format!("machine.network.interfaces[{i}]");
            if interface.name.is_empty()
                || interface.name.len() > 15
                || interface.name.contains('/')
            {
                fail(
                    &format!("{at}.name"),
                    format!(
                        "{:?} is not an interface name (1 to 15 characters, no '/')",
                        interface.name
                    ),
                );
            }
            if let Some(mtu) = interface.mtu
                && !(576..=65535).contains(&mtu)
            {
                fail(
                    &format!("{at}.mtu"),
                    format!("{mtu} is outside 576..=65535"),
                );
            }
            for (j, route) in interface.routes.iter().enumerate() {
                if route.to != route.to.trunc() {
                    fail(
                        &format!("{at}.routes[{j}].to"),
                        format!(
                            "{} has host bits set (the network is {})",
                            route.to,
                            route.to.trunc()
                        ),
                    );
                }
                let reachable =
                    interface.dhcp || interface.addresses.iter().any(|a| a.contains(&route.via));
                if !reachable {
                    fail(
                        &format!("{at}.routes[{j}].via"),
                        format!("{} is not on any of the interface's networks", route.via),
                    );
                }
            }
        }
        if let Some(identity) = &machine.identity {
            check_pair(&mut fail, "machine.identity", &identity.cert, &identity.key);
        }
        if let Some(serving) = &machine.api_certificate {
            check_pair(
                &mut fail,
                "machine.apiCertificate",
                &serving.cert,
                &serving.key,
            );
        }
        if let Some(disk) = &machine.data_disk
            && !disk.starts_with("/dev/")
        {
            fail(
                "machine.dataDisk",
                format!("{disk:?} is not a device path under /dev/"),
            );
        }
        for name in machine.sysctls.keys() {
            if name.is_empty()
                || name.contains("..")
                || name.contains('/')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                fail(
                    &format!("machine.sysctls[{name:?}]"),
                    "is not a sysctl name".into(),
                );
            }
        }
        if !["nftables", "iptables", "ipvs"].contains(&machine.proxy.mode.as_str()) {
            fail(
                "machine.proxy.mode",
                format!(
                    "{:?} is not one of nftables, iptables, ipvs",
                    machine.proxy.mode
                ),
            );
        }

        let cluster = &self.cluster;
        if let Err(message) = check_dns_label(&cluster.name) {
            fail("cluster.name", message);
        }
        if let Err(err) = baton_pki::server_host(&cluster.endpoint) {
            fail("cluster.endpoint", err.to_string());
        }
        if x509_parser::pem::parse_x509_pem(cluster.ca.cert.as_bytes()).is_err() {
            fail("cluster.ca.cert", "is not a PEM certificate".into());
        }
        match (machine.role, &cluster.ca.key) {
            (Role::ControlPlane, None) => fail(
                "cluster.ca.key",
                "is required on a control-plane node".into(),
            ),
            (Role::ControlPlane, Some(key)) => {
                check_pair(&mut fail, "cluster.ca", &cluster.ca.cert, key)
            }
            (Role::Worker, Some(_)) => fail(
                "cluster.ca.key",
                "must not be given to a worker node".into(),
            ),
            (Role::Worker, None) => {}
        }
        match (machine.role, &cluster.service_account_key) {
            (Role::Worker, Some(_)) => fail(
                "cluster.serviceAccountKey",
                "must not be given to a worker node".into(),
            ),
            (Role::ControlPlane, Some(key))
                if baton_pki::ServiceAccountKey::from_private_pem(key).is_err() =>
            {
                fail(
                    "cluster.serviceAccountKey",
                    "is not an ECDSA P-256 private key in PKCS#8 PEM (\"BEGIN PRIVATE KEY\")"
                        .into(),
                );
            }
            _ => {}
        }
        if machine.role == Role::Worker && machine.identity.is_none() {
            fail(
                "machine.identity",
                "is required on a worker node (it cannot issue its own)".into(),
            );
        }
        if machine.role == Role::ControlPlane
            && !cluster
                .control_plane
                .iter()
                .any(|m| m.name == machine.hostname)
        {
            fail(
                "cluster.controlPlane",
                format!("does not list this node ({})", machine.hostname),
            );
        }
        if cluster.pod_cidr.prefix_len() > 24 {
            fail(
                "cluster.podCIDR",
                format!("{} is too small for one /24 per node", cluster.pod_cidr),
            );
        }
        if cluster.pod_cidr.contains(&cluster.service_cidr.network())
            || cluster.service_cidr.contains(&cluster.pod_cidr.network())
        {
            fail(
                "cluster.serviceCIDR",
                format!(
                    "{} overlaps cluster.podCIDR {}",
                    cluster.service_cidr, cluster.pod_cidr
                ),
            );
        }
        for (i, member) in cluster.control_plane.iter().enumerate() {
            if let Err(message) = check_dns_label(&member.name) {
                fail(&format!("cluster.controlPlane[{i}].name"), message);
            }
            if cluster.control_plane[..i]
                .iter()
                .any(|m| m.name == member.name)
            {
                fail(
                    &format!("cluster.controlPlane[{i}].name"),
                    format!("{} is listed twice", member.name),
                );
            }
        }
        if !cluster.service_cidr.contains(&cluster.dns.service_ip) {
            fail(
                "cluster.dns.serviceIP",
                format!(
                    "{} is outside cluster.serviceCIDR {}",
                    cluster.dns.service_ip, cluster.service_cidr
                ),
            );
        }
        errors
    }
}

/// Checks that `name` is a DNS label (RFC 1123: lower-case letters, digits and '-', at most 63,
/// not starting or ending with '-'); the error says so.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS label (lower-case letters, digits and '-', at most 63)"
        ))
    }
}

/// Checks that `cert` is a PEM certificate and `key` the PEM private key of its public key.
fn check_pair(fail: &mut impl FnMut(&str, String), at: &str, cert: &str, key: &str) {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert.as_bytes()) else {
        fail(&format!("{at}.cert"), "is not a PEM certificate".into());
        return;
    };
    let Ok(parsed) = pem.parse_x509() else {
        fail(&format!("{at}.cert"), "is not an X.509 certificate".into());
        return;
    };
    let Ok(key_pair) = rcgen::KeyPair::from_pem(key) else {
        fail(&format!("{at}.key"), "is not a PEM private key".into());
        return;
    };
    let cert_public = parsed.public_key().subject_public_key.data.as_ref();
    if cert_public != key_pair.public_key_raw() {
        fail(
            &format!("{at}.key"),
            format!("does not match the public key of {at}.cert"),
        );
    }
}

/// A valid control-plane configuration for tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Node `cp-1` at 10.251.0.10/24 of cluster `demo`, with a fresh CA.
    pub(crate) fn control_plane_config() -> MachineConfig {
        let ca = baton_pki::ClusterCa::generate("test").unwrap();
        MachineConfig {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            machine: Machine {
                role: Role::ControlPlane,
                hostname: "cp-1".into(),
                network: Network {
                    interfaces: vec![Interface {
                        name: "eth0".into(),
                        addresses: vec!["10.251.0.10/24".parse().unwrap()],
                        routes: vec![StaticRoute {
                            to: "0.0.0.0/0".parse().unwrap(),
                            via: "10.251.0.1".parse().unwrap(),
                        }],
                        mtu: None,
                        dhcp: false,
                    }],
                    nameservers: vec!["10.251.0.1".parse().unwrap()],
                },
                identity: None,
                api_certificate: None,
                data_disk: None,
                sysctls: BTreeMap::new(),
                kernel_args: Vec::new(),
                kubelet: Kubelet::default(),
                proxy: Proxy::default(),
                time: Time::default(),
            },
            cluster: Cluster {
                name: "demo".into(),
                endpoint: "https://10.251.0.10:6443".into(),
                ca: ClusterCa {
                    cert: ca.cert_pem().into(),
                    key: Some(ca.key_pem().into()),
                },
                service_account_key: Some(
                    baton_pki::ServiceAccountKey::generate().unwrap().key_pem,
                ),
                control_plane: vec![ControlPlaneMember {
                    name: "cp-1".into(),
                    address: "10.251.0.10".parse().unwrap(),
                }],
                pod_cidr: default_pod_cidr(),
                service_cidr: default_service_cidr(),
                dns: ClusterDns::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::control_plane_config as control_plane;
    use super::*;

    fn fields(config: &MachineConfig) -> Vec<String> {
        config.validate().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_valid_configuration_round_trips_through_yaml() {
        let config = control_plane();
        assert_eq!(fields(&config), Vec::<String>::new());
        let parsed = MachineConfig::parse(&config.to_yaml(), "test").unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn unknown_fields_and_roles_are_refused_by_name() {
        let yaml = control_plane()
            .to_yaml()
            .replace("role: control-plane", "role: master");
        let err = MachineConfig::parse(&yaml, "config.yaml").unwrap_err();
        assert!(err.to_string().contains("config.yaml"), "{err}");
        assert!(err.problems()[0].contains("master"), "{:?}", err.problems());
        let yaml = control_plane()
            .to_yaml()
            .replace("hostname: cp-1", "hostname: cp-1\n  colour: blue");
        let err = MachineConfig::parse(&yaml, "config.yaml").unwrap_err();
        assert!(err.problems()[0].contains("colour"), "{:?}", err.problems());
    }

    #[test]
    fn every_invalid_field_is_named() {
        let mut config = control_plane();
        config.api_version = "v1".into();
        config.machine.hostname = "Bad_Name".into();
        config.machine.network.interfaces[0].routes[0].via = "192.0.2.1".parse().unwrap();
        config.machine.proxy.mode = "userspace".into();
        config.cluster.dns.service_ip = "10.200.0.10".parse().unwrap();
        let found = fields(&config);
        for field in [
            "apiVersion",
            "machine.hostname",
            "machine.network.interfaces[0].routes[0].via",
            "machine.proxy.mode",
            "cluster.controlPlane",
            "cluster.dns.serviceIP",
        ] {
            assert!(found.iter().any(|f| f == field), "{field} in {found:?}");
        }
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let mut config = control_plane();
        let other = baton_pki::ClusterCa::generate("other").unwrap();
        config.cluster.ca.key = Some(other.key_pem().into());
        let errors = config.validate();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "cluster.ca.key");
        assert!(errors[0].message.contains("does not match"));
    }

    /// Every field path of `value` (`machine.network.interfaces[].name`), maps in
    /// `map_fields` counted as leaves.
    fn field_paths(
        value: &serde_json::Value,
        at: &str,
        map_fields: &[&str],
        out: &mut Vec<String>,
    ) {
        let child = |key: &str| {
            if at.is_empty() {
                key.to_string()
            } else {
                format!("{at}.{key}")
            }
        };
        match value {
            serde_json::Value::Object(fields) if !map_fields.contains(&at) => {
                for (key, value) in fields {
                    let path = child(key);
                    out.push(path.clone());
                    field_paths(value, &path, map_fields, out);
                }
            }
            serde_json::Value::Array(items) => {
                if let Some(first) = items.first() {
                    field_paths(first, &format!("{at}[]"), map_fields, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_reference_documents_every_field() {
        let doc = include_str!("../../docs/machine-config.md");
        let example = doc
            .split("```yaml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("an example in docs/machine-config.md");
        let parsed: MachineConfig = serde_saphyr::from_str(example).expect("the example parses");
        assert_eq!(parsed.machine.hostname, "worker-1");
        // A configuration with every optional field set.
        let mut full = control_plane();
        full.machine.identity = Some(CertificateAndKey {
            cert: "c".into(),
            key: "k".into(),
        });
        full.machine.api_certificate = Some(CertificateAndKey {
            cert: "c".into(),
            key: "k".into(),
        });
        full.machine.data_disk = Some("/dev/vdb".into());
        full.machine
            .sysctls
            .insert("vm.max_map_count".into(), "1".into());
        full.machine.kernel_args.push("quiet".into());
        full.machine.network.interfaces[0].mtu = Some(1500);
        full.machine
            .kubelet
            .insecure_registries
            .push("r:5000".into());
        full.machine.kubelet.extra_args.push("--max-pods=5".into());
        full.machine.proxy.extra_args.push("--v=2".into());
        full.machine
            .time
            .servers
            .push("192.0.2.123".parse().unwrap());
        full.cluster
            .dns
            .upstreams
            .push("10.0.0.1:53".parse().unwrap());
        let mut paths = Vec::new();
        field_paths(
            &serde_json::to_value(&full).unwrap(),
            "",
            &["machine.sysctls"],
            &mut paths,
        );
        let missing: Vec<&String> = paths
            .iter()
            .filter(|p| !doc.contains(&format!("| `{p}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/machine-config.md: {missing:?}"
        );
    }

    #[test]
    fn workers_need_an_identity_and_no_ca_key() {
        let mut config = control_plane();
        config.machine.role = Role::Worker;
        let found = fields(&config);
        assert!(found.contains(&"cluster.ca.key".to_string()), "{found:?}");
        assert!(found.contains(&"machine.identity".to_string()), "{found:?}");
        assert!(
            found.contains(&"cluster.serviceAccountKey".to_string()),
            "{found:?}"
        );
    }

    #[test]
    fn the_service_account_key_must_be_an_ecdsa_key() {
        let mut config = control_plane();
        config.cluster.service_account_key = Some("not a key".into());
        assert_eq!(fields(&config), ["cluster.serviceAccountKey"]);
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        config.cluster.service_account_key = Some(p384.serialize_pem());
        assert_eq!(fields(&config), ["cluster.serviceAccountKey"], "P-384");
        config.cluster.service_account_key = None;
        assert!(fields(&config).is_empty(), "optional");
    }
}
