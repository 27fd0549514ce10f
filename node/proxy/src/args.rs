//! `baton proxy` flags, named as kube-proxy's where they mean the same.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Flags of `baton proxy`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Kubeconfig of the proxy's API client.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The node's name instead of the machine's hostname (for Local traffic policies).
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The dataplane: nftables (the default) or iptables.
    #[arg(long, default_value = "nftables")]
    pub proxy_mode: String,
    /// The cluster's pod CIDR: traffic to a ClusterIP from outside it is masqueraded.
    #[arg(long)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// Changes closer together than this are applied together.
    #[arg(long, default_value = "1s", value_parser = baton_client::parse_duration)]
    pub min_sync_period: Duration,
    /// Where /metrics (and /healthz) are served.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    /// Where /healthz is served.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Remove the rules of every mode and exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// The dataplane modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// One nftables table with verdict maps.
    Nftables,
    /// Upstream's iptables chains, applied with iptables-restore.
    Iptables,
}

/// A flag's value could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid --{flag} {value:?}: {reason}")]
pub struct InvalidProxyFlagError {
    /// The flag.
    pub flag: &'static str,
    /// Its value.
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl ProxyArgs {
    /// The node's name: --hostname-override, else the machine's hostname, lowercased.
    pub fn node_name(&self) -> String {
        self.hostname_override
            .clone()
            .unwrap_or_else(|| nix_hostname().unwrap_or_else(|| "localhost".into()))
            .to_lowercase()
    }

    /// The mode asked for.
    pub fn mode(&self) -> Result<ProxyMode, InvalidProxyFlagError> {
        let fail = |reason: &str| InvalidProxyFlagError {
            flag: "proxy-mode",
            value: self.proxy_mode.clone(),
            reason: reason.into(),
        };
        match self.proxy_mode.as_str() {
            "nftables" | "" => Ok(ProxyMode::Nftables),
            "iptables" => Ok(ProxyMode::Iptables),
            "ipvs" | "userspace" => {
                Err(fail("this mode is not built yet; use nftables or iptables"))
            }
            _ => Err(fail("must be one of nftables, iptables, ipvs, userspace")),
        }
    }
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}
