//! `baton kubelet` flags, named as the upstream kubelet's where they mean the same.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Flags of `baton kubelet`.
#[derive(Debug, Clone, Args)]
pub struct KubeletArgs {
    /// Kubeconfig of the kubelet's API client.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The node's name instead of the machine's hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The node's InternalIP (default: the first global IPv4 address of the machine, else
    /// 127.0.0.1).
    #[arg(long)]
    pub node_ip: Option<std::net::IpAddr>,
    /// Labels to register the node with: key=value,...
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints to register the node with: key=value:Effect,...
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// Most pods the node runs.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Resources kept for the system: cpu=100m,memory=100Mi,ephemeral-storage=1Gi,pid=1000.
    #[arg(long, value_delimiter = ',')]
    pub system_reserved: Vec<String>,
    /// Resources kept for Kubernetes' own daemons, in the same form.
    #[arg(long, value_delimiter = ',')]
    pub kube_reserved: Vec<String>,
    /// The kubelet's state: pod directories, volumes, container bundles.
    #[arg(long, default_value = "/var/lib/baton/kubelet")]
    pub root_dir: PathBuf,
    /// Where container logs go (`<namespace>_<pod>_<uid>/<container>/<restarts>.log`).
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
    /// The runtime process's state and socket.
    #[arg(long, default_value = "/run/baton/runtime")]
    pub runtime_root: PathBuf,
    /// How many runtime processes create containers side by side (each one single-threaded);
    /// by default one per CPU, at most 4. The first lives in --runtime-root, the others in
    /// its `processes/<n>`.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub runtime_processes: Option<u16>,
    /// The OCI image store.
    #[arg(long, default_value = "/var/lib/baton/images")]
    pub image_store: PathBuf,
    /// Registries (host:port) pulled over plain HTTP.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// The cgroup under which pods' cgroups live (kubepods/...).
    #[arg(long, default_value = "/")]
    pub cgroup_root: String,
    /// Rotate a container's log when it grows past this size.
    #[arg(long, default_value = "10Mi")]
    pub container_log_max_size: String,
    /// Log files kept per container, the live one included.
    #[arg(long, default_value_t = 5)]
    pub container_log_max_files: u32,
    /// How often the node's status is checked and, when changed, posted.
    #[arg(long, default_value = "10s", value_parser = baton_client::parse_duration)]
    pub node_status_update_frequency: Duration,
    /// Cluster DNS server addresses written into pods' resolv.conf (dnsPolicy ClusterFirst).
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The address the kubelet's HTTPS server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: std::net::IpAddr,
    /// The port of the kubelet's HTTPS server (logs, exec; the API server proxies to it).
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// The serving certificate (PEM); without it one is made under --root-dir/pki.
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The serving certificate's key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA that clients' certificates must chain to (the API server's kubelet client
    /// certificate); without it the server accepts every client.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Collect unused images when the image filesystem is fuller than this percentage.
    #[arg(long, default_value_t = 85)]
    pub image_gc_high_threshold: u8,
    /// ... until it is below this percentage.
    #[arg(long, default_value_t = 80)]
    pub image_gc_low_threshold: u8,
    /// The node's pod network: `baton` (a bridge and a veth pair per pod, set up by the
    /// kubelet itself), or `cni` (the plugins of the network in --cni-conf-dir).
    #[arg(long, default_value = "baton", value_parser = ["baton", "cni"])]
    pub network_plugin: String,
    /// With --network-plugin=cni: the directory of CNI network configurations; the first
    /// valid file in lexical order is the pod network.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// With --network-plugin=cni: the directories of CNI plugin binaries, comma-separated,
    /// searched in order.
    #[arg(long, default_value = "/opt/cni/bin", value_delimiter = ',')]
    pub cni_bin_dir: Vec<PathBuf>,
    /// With --network-plugin=cni: where the result of each pod's ADD is kept, for its DEL and
    /// CHECK (default: --root-dir/cni-cache).
    #[arg(long)]
    pub cni_cache_dir: Option<PathBuf>,
    /// The node's pod CIDR when its Node has none (standalone: no controller manager
    /// allocating node CIDRs). A CIDR on the Node wins.
    #[arg(long)]
    pub pod_cidr: Option<ipnet::Ipv4Net>,
    /// An unused image younger than this (since its last use, pull or import) is not
    /// collected.
    #[arg(long, default_value = "2m", value_parser = baton_client::parse_duration)]
    pub minimum_image_ttl_duration: Duration,
}

/// A flag's value could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid --{flag} {value:?}: {reason}")]
pub struct InvalidFlagError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

impl KubeletArgs {
    /// The node's name: --hostname-override, else the machine's hostname, lowercased.
    pub fn node_name(&self) -> String {
        self.hostname_override
            .clone()
            .unwrap_or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|name| name.into_string().ok())
                    .unwrap_or_else(|| "localhost".into())
            })
            .to_lowercase()
    }

    /// Checks the flags that take structured values; the error names the flag.
    pub fn validate(&self) -> Result<(), InvalidFlagError> {
        parse_labels(&self.node_labels)?;
        parse_taints(&self.register_with_taints)?;
        parse_reserved("system-reserved", &self.system_reserved)?;
        parse_reserved("kube-reserved", &self.kube_reserved)?;
        crate::quantity::parse_nanos(&self.container_log_max_size).ok_or_else(|| {
            InvalidFlagError {
                flag: "container-log-max-size",
                value: self.container_log_max_size.clone(),
                reason: "not a quantity".into(),
            }
        })?;
        if self.image_gc_low_threshold >= self.image_gc_high_threshold
            || self.image_gc_high_threshold > 100
        {
            return Err(InvalidFlagError {
                flag: "image-gc-low-threshold",
                value: self.image_gc_low_threshold.to_string(),
                reason: format!(
                    "must be below --image-gc-high-threshold ({}), which is at most 100",
                    self.image_gc_high_threshold
                ),
            });
        }
        Ok(())
    }

    /// The container log size limit in bytes.
    pub fn log_max_size(&self) -> u64 {
        crate::quantity::parse_nanos(&self.container_log_max_size)
            .map(|nanos| (nanos / 1_000_000_000).max(0) as u64)
            .unwrap_or(10 << 20)
    }
}

/// `k=v` pairs of --node-labels.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, InvalidFlagError> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .ok_or_else(|| InvalidFlagError {
                    flag: "node-labels",
                    value: item.clone(),
                    reason: "expected key=value".into(),
                })
        })
        .collect()
}

/// `key=value:Effect` or `key:Effect` items of --register-with-taints.
pub fn parse_taints(
    items: &[String],
) -> Result<Vec<k8s_openapi::api::core::v1::Taint>, InvalidFlagError> {
    items
        .iter()
        .map(|item| {
            baton_client::node_flags::parse_taint(item).ok_or_else(|| InvalidFlagError {
                flag: "register-with-taints",
                value: item.clone(),
                reason: "expected key=value:Effect with Effect NoSchedule, PreferNoSchedule or NoExecute".into(),
            })
        })
        .collect()
}

/// `resource=quantity` items of --system-reserved / --kube-reserved.
pub fn parse_reserved(
    flag: &'static str,
    items: &[String],
) -> Result<BTreeMap<String, String>, InvalidFlagError> {
    items
        .iter()
        .map(|item| {
            let invalid = |reason: &str| InvalidFlagError {
                flag,
                value: item.clone(),
                reason: reason.into(),
            };
            let (name, amount) = item
                .split_once('=')
                .ok_or_else(|| invalid("expected resource=quantity"))?;
            if !matches!(name, "cpu" | "memory" | "ephemeral-storage" | "pid") {
                return Err(invalid(
                    "resource must be cpu, memory, ephemeral-storage or pid",
                ));
            }
            crate::quantity::parse_nanos(amount).ok_or_else(|| invalid("not a quantity"))?;
            Ok((name.to_owned(), amount.to_owned()))
        })
        .collect()
}
