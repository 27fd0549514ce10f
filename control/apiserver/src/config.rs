//! `baton apiserver` flags, named as kube-apiserver names them where they share meaning.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// The API server's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiServerArgs {
    /// Comma-separated etcd endpoints, e.g. http://127.0.0.1:2379.
    #[arg(long = "etcd-servers", value_delimiter = ',', required = true)]
    pub etcd_servers: Vec<String>,
    /// CA file that signed etcd's serving certificate.
    #[arg(long = "etcd-cafile")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long = "etcd-certfile")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long = "etcd-keyfile")]
    pub etcd_keyfile: Option<PathBuf>,
    /// The address to serve HTTPS on.
    #[arg(long = "bind-address", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// The port to serve HTTPS on (0 picks a free one and prints it).
    #[arg(long = "secure-port", default_value_t = 6443)]
    pub secure_port: u16,
    /// The IP range Service ClusterIPs are allocated from.
    #[arg(long = "service-cluster-ip-range", default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: IpNet,
    /// The port range NodePorts are allocated from, e.g. 30000-32767.
    #[arg(long = "service-node-port-range", default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: (u16, u16),
    /// The serving certificate (PEM).
    #[arg(long = "tls-cert-file", required = true)]
    pub tls_cert_file: PathBuf,
    /// The serving certificate's key (PEM).
    #[arg(long = "tls-private-key-file", required = true)]
    pub tls_private_key_file: PathBuf,
    /// CA bundle that client certificates must chain to; its CN/O become user and groups.
    #[arg(long = "client-ca-file", required = true)]
    pub client_ca_file: PathBuf,
    /// The address other components and the `kubernetes` Service use to reach this server
    /// (defaults to the bind address, or 127.0.0.1 when that is unspecified).
    #[arg(long = "advertise-address")]
    pub advertise_address: Option<IpAddr>,
    /// How the `kubernetes` Service's endpoints are kept: `lease` (every API server whose
    /// record in etcd is renewed) or `none`.
    #[arg(long = "endpoint-reconciler-type", value_enum, default_value = "lease")]
    pub endpoint_reconciler_type: crate::master_leases::EndpointReconcilerType,
    /// Seconds a pod tolerates a not-ready node (admission's default toleration).
    #[arg(long = "default-not-ready-toleration-seconds", default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,
    /// Seconds a pod tolerates an unreachable node (admission's default toleration).
    #[arg(long = "default-unreachable-toleration-seconds", default_value_t = 300)]
    pub default_unreachable_toleration_seconds: i64,
    /// How often etcd's history is compacted (keeping one interval of it); 0 disables.
    #[arg(long = "etcd-compaction-interval", default_value = "5m", value_parser = parse_duration)]
    pub etcd_compaction_interval: std::time::Duration,
    /// Client certificate the API server presents to kubelets (pods/log, pods/exec ...).
    #[arg(long = "kubelet-client-certificate", requires = "kubelet_client_key")]
    pub kubelet_client_certificate: Option<PathBuf>,
    /// Key of --kubelet-client-certificate.
    #[arg(long = "kubelet-client-key", requires = "kubelet_client_certificate")]
    pub kubelet_client_key: Option<PathBuf>,
    /// CA that kubelets' serving certificates must chain to (without it they are not verified,
    /// as upstream).
    #[arg(long = "kubelet-certificate-authority")]
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// The issuer (`iss`) of service account tokens.
    #[arg(
        long = "service-account-issuer",
        default_value = "https://kubernetes.default.svc.cluster.local"
    )]
    pub service_account_issuer: String,
    /// A public key (PEM) that verifies service account tokens; repeatable (keys being rotated
    /// out stay listed). The public half of --service-account-signing-key-file is always one.
    #[arg(long = "service-account-key-file")]
    pub service_account_key_file: Vec<PathBuf>,
    /// The private key (PEM, PKCS#8, ECDSA P-256) that signs service account tokens; without it
    /// no tokens are issued (serviceaccounts/token) and pods get no API token volume.
    #[arg(long = "service-account-signing-key-file")]
    pub service_account_signing_key_file: Option<PathBuf>,
    /// The audiences a token must name to be accepted (defaults to the issuer).
    #[arg(long = "api-audiences", value_delimiter = ',')]
    pub api_audiences: Vec<String>,
    /// Write the port actually bound to this file once serving (for tests and tooling).
    #[arg(long = "port-file")]
    pub port_file: Option<PathBuf>,
}

/// Parses a duration as Go prints them: `300ms`, `10s`, `5m`, `1h`, or `0`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{s:?} has no unit (ms, s, m, h)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a port range like 30000-32767"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| format!("{lo:?} is not a port"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| format!("{hi:?} is not a port"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?} is not a valid port range"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(
            super::parse_duration("5m").unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            super::parse_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(super::parse_duration("0").unwrap(), Duration::ZERO);
        assert!(super::parse_duration("5").is_err());
        assert!(super::parse_duration("5d").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("30000-32767").unwrap(), (30000, 32767));
        assert!(parse_port_range("32767-30000").is_err());
        assert!(parse_port_range("30000").is_err());
    }
}
