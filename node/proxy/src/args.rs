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
    /// The longest time between two syncs: without a change, the rules are still synced this
    /// often (what a mode checks then, e.g. the ipvs mode's node addresses and hourly full
    /// sync, is acted on).
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub sync_period: Duration,
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
    /// A proxy in the process, listening on each cluster IP (on the loopback interface)
    /// and node port; no packet rules.
    Userspace,
    /// IPVS virtual services through generic netlink, the cluster IPs on a dummy interface.
    Ipvs,
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
            "ipvs" if !std::path::Path::new(IPVS_PROC).exists() => Err(fail(
                "this kernel has no IPVS (CONFIG_IP_VS; /proc/net/ip_vs is missing) and the mode also needs the dummy interface (CONFIG_DUMMY); use nftables or iptables",
            )),
            "userspace" => Ok(ProxyMode::Userspace),
            "ipvs" => Ok(ProxyMode::Ipvs),
            _ => Err(fail("must be one of nftables, iptables, ipvs, userspace")),
        }
    }
}

/// A duration above zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match baton_client::parse_duration(text)? {
        zero if zero.is_zero() => Err("must be greater than 0".into()),
        duration => Ok(duration),
    }
}

/// Present when the kernel has IPVS (built in or loaded).
const IPVS_PROC: &str = "/proc/net/ip_vs";

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    fn mode(value: &str) -> Result<ProxyMode, InvalidProxyFlagError> {
        Cli::parse_from(["proxy", "--kubeconfig=k", &format!("--proxy-mode={value}")])
            .args
            .mode()
    }

    #[test]
    fn the_sync_period_is_30_seconds_unless_set_above_zero() {
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(["proxy", "--kubeconfig=k"].iter().chain(extra))
                .map(|cli| cli.args.sync_period)
        };
        assert_eq!(parse(&[]).unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse(&["--sync-period=2m"]).unwrap(),
            Duration::from_secs(120)
        );
        let err = parse(&["--sync-period=0s"]).unwrap_err().to_string();
        assert!(
            err.contains("--sync-period") && err.contains("must be greater than 0"),
            "{err}"
        );
    }

    #[test]
    fn modes_are_named_and_refused_with_the_reason() {
        assert_eq!(mode("nftables").unwrap(), ProxyMode::Nftables);
        assert_eq!(mode("iptables").unwrap(), ProxyMode::Iptables);
        assert_eq!(mode("userspace").unwrap(), ProxyMode::Userspace);
        let err = mode("bogus").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid --proxy-mode \"bogus\": must be one of nftables, iptables, ipvs, userspace"
        );
        // The ipvs mode starts where the kernel has IPVS, and is refused naming it elsewhere
        // (this machine's kernel has none; a booted node's does: tests/qemu_boot.rs).
        match mode("ipvs") {
            Ok(mode) => {
                assert!(std::path::Path::new(IPVS_PROC).exists());
                assert_eq!(mode, ProxyMode::Ipvs);
            }
            Err(err) => {
                assert!(!std::path::Path::new(IPVS_PROC).exists());
                assert!(err.to_string().contains("CONFIG_IP_VS"), "{err}");
            }
        }
    }
}
