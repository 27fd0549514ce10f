//! Where a pod's things live on the node: `<root>/pods/<uid>/` holds its /etc files (hosts,
//! resolv.conf, hostname), its volumes, and one bundle directory per container attempt
//! (`containers/<name>/<attempt>/` with config.json and the rootfs overlay); its logs are under
//! `<pod-logs-dir>/<namespace>_<name>_<uid>/<container>/<attempt>.log`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

/// The directories and files of one pod.
#[derive(Debug, Clone)]
pub struct PodDirs {
    /// `<root>/pods/<uid>`.
    pub dir: PathBuf,
    /// `<pod-logs-dir>/<namespace>_<name>_<uid>`.
    pub logs: PathBuf,
}

impl PodDirs {
    /// The directories of the pod with this namespace, name and uid.
    pub fn new(root: &Path, logs_root: &Path, namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            dir: root.join("pods").join(uid),
            logs: logs_root.join(format!("{namespace}_{name}_{uid}")),
        }
    }

    pub fn etc_hosts(&self) -> PathBuf {
        self.dir.join("etc-hosts")
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }

    /// The directory of volume `name`.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }

    /// The bundle directory of attempt `attempt` of container `name`.
    pub fn bundle(&self, container: &str, attempt: u32) -> PathBuf {
        self.dir
            .join("containers")
            .join(container)
            .join(attempt.to_string())
    }

    /// The termination message file of an attempt (mounted at terminationMessagePath).
    pub fn termination_log(&self, container: &str, attempt: u32) -> PathBuf {
        self.bundle(container, attempt).join("termination-log")
    }

    /// The CRI log file of an attempt.
    pub fn log_file(&self, container: &str, attempt: u32) -> PathBuf {
        self.logs.join(container).join(format!("{attempt}.log"))
    }

    /// Removes the log of one attempt, rotated files included.
    pub fn remove_log(&self, container: &str, attempt: u32) {
        let live = self.log_file(container, attempt);
        let prefix = format!("{attempt}.log.");
        let rotated = std::fs::read_dir(self.logs.join(container))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
            .map(|entry| entry.path());
        for path in std::iter::once(live).chain(rotated) {
            let _ = fs::remove_file(path);
        }
    }

    /// Writes the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname.
    pub fn write_etc_files(&self, files: &EtcFiles) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        write_atomically(&self.etc_hosts(), files.hosts.as_bytes())?;
        write_atomically(&self.resolv_conf(), files.resolv_conf.as_bytes())?;
        write_atomically(&self.hostname(), format!("{}\n", files.hostname).as_bytes())
    }

    /// Removes everything of the pod but its logs.
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// Removes the pod's logs.
    pub fn remove_logs(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.logs) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    fs::write(&temporary, contents)?;
    fs::rename(&temporary, path)
}

/// The contents of a pod's /etc files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    pub hosts: String,
    pub resolv_conf: String,
    pub hostname: String,
}

/// What the pod's /etc files depend on besides the pod.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// --cluster-dns.
    pub cluster_dns: Vec<String>,
    /// --cluster-domain.
    pub cluster_domain: String,
    /// The node's own resolv.conf (for dnsPolicy Default, and for ClusterFirst without
    /// cluster DNS).
    pub host_resolv_conf: String,
    /// The node's hostname (hostNetwork pods).
    pub node_hostname: String,
}

/// Computes the pod's /etc files as the kubelet does: a managed hosts file with the pod's own
/// names and hostAliases, and resolv.conf from dnsPolicy and dnsConfig.
pub fn etc_files(pod: &Pod, pod_ip: Option<&str>, dns: &DnsSettings) -> EtcFiles {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let hostname = if host_network {
        dns.node_hostname.clone()
    } else {
        crate::container_spec::namespaces::short_hostname(pod)
    };
    let mut hosts = String::from("# Kubernetes-managed hosts file.\n");
    hosts.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    hosts.push_str("fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
    if let Some(ip) = pod_ip {
        match spec.and_then(|s| s.subdomain.as_deref()) {
            Some(subdomain) => hosts.push_str(&format!(
                "{ip}\t{hostname}.{subdomain}.{namespace}.svc.{}\t{hostname}\n",
                dns.cluster_domain
            )),
            None => hosts.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    if let Some(aliases) = spec.and_then(|s| s.host_aliases.as_ref())
        && !aliases.is_empty()
    {
        hosts.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.clone().unwrap_or_default().join("\t");
            hosts.push_str(&format!("{}\t{names}\n", alias.ip));
        }
    }
    EtcFiles {
        hosts,
        resolv_conf: resolv_conf(pod, &namespace, dns),
        hostname,
    }
}

fn resolv_conf(pod: &Pod, namespace: &str, dns: &DnsSettings) -> String {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.clone())
        .unwrap_or_else(|| "ClusterFirst".into());
    let (host_servers, host_searches, host_options) = parse_resolv_conf(&dns.host_resolv_conf);
    let cluster = !dns.cluster_dns.is_empty()
        && (policy == "ClusterFirstWithHostNet" || (policy == "ClusterFirst" && !host_network));
    let (mut servers, mut searches, mut options) = match policy.as_str() {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        _ if cluster => {
            let domain = &dns.cluster_domain;
            let mut searches = vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.clone(),
            ];
            searches.extend(host_searches);
            (
                dns.cluster_dns.clone(),
                searches,
                vec!["ndots:5".to_owned()],
            )
        }
        _ => (host_servers, host_searches, host_options),
    };
    if let Some(config) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(config.nameservers.clone().unwrap_or_default());
        searches.extend(config.searches.clone().unwrap_or_default());
        for option in config.options.clone().unwrap_or_default() {
            let name = option.name.unwrap_or_default();
            options.retain(|existing| existing.split(':').next() != Some(name.as_str()));
            options.push(match option.value {
                Some(value) => format!("{name}:{value}"),
                None => name,
            });
        }
    }
    searches.dedup();
    servers.truncate(3);
    searches.truncate(32);
    let mut text = String::new();
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for server in &servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    text
}

/// nameservers, search domains and options of a resolv.conf.
fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut servers = Vec::new();
    let mut searches = Vec::new();
    let mut options = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(str::to_owned)),
            Some("search") | Some("domain") => {
                searches = words.map(str::to_owned).collect();
            }
            Some("options") => options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    (servers, searches, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostAlias, PodDNSConfig, PodSpec};

    fn settings() -> DnsSettings {
        DnsSettings {
            cluster_dns: vec!["10.96.0.10".into()],
            cluster_domain: "cluster.local".into(),
            host_resolv_conf: "nameserver 1.1.1.1\nsearch example.org\n".into(),
            node_hostname: "node-1".into(),
        }
    }

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    #[test]
    fn cluster_first_uses_cluster_dns_with_the_namespace_search_path() {
        let files = etc_files(&pod(PodSpec::default()), Some("10.244.1.5"), &settings());
        assert_eq!(
            files.resolv_conf,
            "search shop.svc.cluster.local svc.cluster.local cluster.local example.org\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert!(
            files.hosts.contains("10.244.1.5\tweb-0\n"),
            "{}",
            files.hosts
        );
        assert_eq!(files.hostname, "web-0");
    }

    #[test]
    fn default_policy_and_host_network_use_the_node_resolv_conf() {
        let spec = PodSpec {
            dns_policy: Some("Default".into()),
            ..Default::default()
        };
        let files = etc_files(&pod(spec), None, &settings());
        assert_eq!(
            files.resolv_conf,
            "search example.org\nnameserver 1.1.1.1\n"
        );
        let spec = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        let files = etc_files(&pod(spec), None, &settings());
        assert_eq!(
            files.resolv_conf,
            "search example.org\nnameserver 1.1.1.1\n"
        );
        assert_eq!(files.hostname, "node-1");
    }

    #[test]
    fn dns_config_subdomain_and_host_aliases_are_applied() {
        let spec = PodSpec {
            dns_policy: Some("None".into()),
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["8.8.8.8".into()]),
                searches: Some(vec!["corp".into()]),
                options: Some(vec![k8s_openapi::api::core::v1::PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                }]),
            }),
            hostname: Some("db".into()),
            subdomain: Some("headless".into()),
            host_aliases: Some(vec![HostAlias {
                ip: "10.1.2.3".into(),
                hostnames: Some(vec!["foo.local".into(), "bar.local".into()]),
            }]),
            ..Default::default()
        };
        let files = etc_files(&pod(spec), Some("10.244.0.9"), &settings());
        assert_eq!(
            files.resolv_conf,
            "search corp\nnameserver 8.8.8.8\noptions ndots:2\n"
        );
        assert!(
            files
                .hosts
                .contains("10.244.0.9\tdb.headless.shop.svc.cluster.local\tdb\n")
        );
        assert!(files.hosts.contains("10.1.2.3\tfoo.local\tbar.local\n"));
        assert_eq!(files.hostname, "db");
    }
}
