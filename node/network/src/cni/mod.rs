//! A CNI runtime (spec 1.0): the kubelet's other pod network, for users who bring their own
//! plugins (Calico, Flannel, Cilium, the reference plugins). ADD runs a network's plugins in
//! order, each given the previous one's result; DEL runs them in reverse with the result ADD
//! gave; CHECK asks each whether the attachment is still as ADD left it. Every attachment has
//! a cache file (as libcni's `/var/lib/cni/results`), written before the first ADD runs and
//! completed with the result, so that DEL and CHECK use the configuration the container was
//! attached with (also after a restart, a crash in the middle of ADD, or a change of
//! configuration) and nothing a plugin did is forgotten.

mod config;
mod exec;

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use config::{LoadConfigError, NetworkConfigList, PluginConfig};
pub use exec::{Operation, PLUGIN_TIMEOUT, RunPluginError};

/// The runtime's settings: where configurations, plugins and the cache are.
#[derive(Debug, Clone)]
pub struct CniPlugins {
    /// The configuration directory (upstream's `--cni-conf-dir`, /etc/cni/net.d).
    pub conf_dir: PathBuf,
    /// Where plugin binaries are looked for, in order (`--cni-bin-dir`, /opt/cni/bin).
    pub bin_dirs: Vec<PathBuf>,
    /// One file per attached container.
    pub cache_dir: PathBuf,
}

/// A container to attach: its id, network namespace, interface name, and what the plugins
/// are told about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `CNI_CONTAINERID`: unique on the node (the pod's sandbox id).
    pub container_id: String,
    /// `CNI_NETNS`: the container's network namespace file.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface to make inside the namespace.
    pub ifname: String,
    /// `CNI_ARGS` pairs (the pod's namespace, name and uid for Kubernetes).
    pub args: Vec<(String, String)>,
    /// Values for the plugins' declared capabilities (`portMappings`, ...).
    pub capability_args: Map<String, Value>,
}

/// What the cache holds for a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAttachment {
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The namespace ADD ran in: a namespace made again at the same path is another one,
    /// whose container must be attached again.
    #[serde(default)]
    pub netns_identity: Option<NamespaceIdentity>,
    /// While ADD has not finished: how many plugins were started (DEL undoes only those).
    #[serde(default)]
    pub started: Option<usize>,
    /// The configuration list it was attached with.
    pub config: Value,
    /// The result of ADD; null while ADD runs, or when ADD failed and undoing it failed too.
    pub result: Value,
}

/// A CNI operation on a container failed.
#[derive(Debug, thiserror::Error)]
pub enum CniOperationError {
    /// A plugin failed (libcni's words).
    #[error("plugin type={plugin_type:?} name={network:?} failed ({})", operation.verb())]
    Plugin {
        /// The plugin's `type`.
        plugin_type: String,
        /// The network's name.
        network: String,
        /// What it was asked to do.
        operation: Operation,
        /// What went wrong.
        #[source]
        source: RunPluginError,
    },
    /// The container must be attached, and no network is configured.
    #[error("no CNI network is configured")]
    NoNetwork,
    /// The cache file could not be read.
    #[error("read the CNI cache file {}", path.display())]
    ReadCache {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cache file holds no entry (a torn write).
    #[error("decode the CNI cache file {}", path.display())]
    DecodeCache {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The cache file could not be written.
    #[error("write the CNI cache file {}", path.display())]
    WriteCache {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cache file could not be removed.
    #[error("remove the CNI cache file {}", path.display())]
    RemoveCache {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Attachment {
    /// `CNI_ARGS`.
    fn args_text(&self) -> String {
        self.args
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// What tells a network namespace from any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceIdentity {
    /// The boot it was seen in (/proc/sys/kernel/random/boot_id).
    pub boot_id: String,
    /// Its `SO_NETNS_COOKIE`, which the kernel never reuses while it runs (namespace inode
    /// numbers it does); none where it could not be read.
    pub cookie: Option<u64>,
    /// The device of its file.
    pub device: u64,
    /// The inode of its file.
    pub inode: u64,
}

impl NamespaceIdentity {
    /// The identity of the namespace whose file is at `path` (a file that is not a namespace
    /// has no cookie).
    pub fn of(path: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let cookie = crate::NetNs::open(path)
            .ok()
            .and_then(|namespace| namespace.run(netns_cookie).ok().flatten());
        Some(Self {
            boot_id,
            cookie,
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }

    /// Whether both name the same namespace: the same boot, and the same cookie where both
    /// have one (a cookie that could not be read this time is no proof of a new namespace),
    /// else the same file.
    pub fn same_namespace(&self, other: &Self) -> bool {
        self.boot_id == other.boot_id
            && match (self.cookie, other.cookie) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => (self.device, self.inode) == (other.device, other.inode),
            }
    }
}

/// The calling thread's network namespace cookie, from a socket that is never bound (nix has
/// no wrapper for the option).
#[allow(unsafe_code)]
fn netns_cookie() -> Option<u64> {
    use std::os::fd::AsRawFd;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let mut cookie: u64 = 0;
    let mut length = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer is a u64 that lives through the call, and `length` says its size.
    let status = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut length,
        )
    };
    (status == 0).then_some(cookie)
}

impl CniPlugins {
    /// The network the configuration directory holds now.
    pub fn load(&self) -> Result<NetworkConfigList, LoadConfigError> {
        NetworkConfigList::load(&self.conf_dir)
    }

    /// Attaches the container, or keeps it attached; returns the result of its ADD. A
    /// container the cache holds as attached in the same namespace is checked with CHECK and
    /// kept (a failed CHECK is logged: attaching again would cut a running container's
    /// connections, and CHECK can fail wrongly, as Debian's portmap 1.1.1 does for IPv4-only
    /// containers, containernetworking/plugins#819). Anything else cached (another
    /// namespace, an ADD that never finished) is detached first, then the container is
    /// attached to `network` (which it must then be given).
    pub async fn attach(
        &self,
        network: Option<&NetworkConfigList>,
        attachment: &Attachment,
    ) -> Result<Value, CniOperationError> {
        let id = &attachment.container_id;
        match self.cached(id) {
            Ok(Some(cached))
                if !cached.result.is_null()
                    && cached
                        .netns_identity
                        .as_ref()
                        .zip(NamespaceIdentity::of(&attachment.netns))
                        .is_some_and(|(then, now)| then.same_namespace(&now)) =>
            {
                if let Err(err) = self.check(&cached).await {
                    tracing::warn!(
                        container = %id,
                        err = &err as &dyn std::error::Error,
                        "the container's network failed its CNI CHECK; keeping it as attached"
                    );
                }
                return Ok(cached.result);
            }
            Ok(None) => {}
            // Detached first; an unreadable entry is dropped there.
            Ok(Some(_)) | Err(_) => self.del(id).await?,
        }
        self.add(network.ok_or(CniOperationError::NoNetwork)?, attachment)
            .await
    }

    /// Runs ADD through the plugins in order and caches the result. When a plugin fails,
    /// what the earlier ones did is undone with DEL (as container runtimes tear a failed
    /// sandbox's network down); if that fails too, the entry stays for a later DEL.
    async fn add(
        &self,
        network: &NetworkConfigList,
        attachment: &Attachment,
    ) -> Result<Value, CniOperationError> {
        let mut entry = CachedAttachment {
            attachment: attachment.clone(),
            netns_identity: NamespaceIdentity::of(&attachment.netns),
            config: network.to_value(),
            result: Value::Null,
            started: Some(0),
        };
        let mut result: Option<Value> = None;
        for (index, plugin) in network.plugins.iter().enumerate() {
            let stdin = plugin.stdin(network, result.as_ref(), &attachment.capability_args);
            // Recorded before the plugin runs (and only once its binary is found), so that a
            // DEL after a crash undoes exactly the plugins that may have done something.
            let found = exec::find_plugin(&plugin.plugin_type, &self.bin_dirs);
            if found.is_ok() {
                entry.started = Some(index + 1);
                self.write_cache(&entry)?;
            }
            let run = match found {
                Ok(_) => {
                    self.run(plugin, network, Operation::Add, attachment, true, &stdin)
                        .await
                }
                Err(err) => Err(err),
            }
            .and_then(|out| {
                serde_json::from_slice::<Value>(&out)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| RunPluginError::BadResult {
                        output: exec::quoted(&out),
                    })
            });
            match run {
                Ok(value) => result = Some(value),
                Err(source) => {
                    let prev = result
                        .as_ref()
                        .filter(|_| network.passes_prev_result_to_del());
                    let started = entry.started.unwrap_or_default();
                    match self
                        .del_with(network, started, attachment, prev, true)
                        .await
                    {
                        Ok(()) => self.remove_cache(&attachment.container_id)?,
                        Err(err) => tracing::warn!(
                            container = %attachment.container_id,
                            err = &err as &dyn std::error::Error,
                            "undoing a failed CNI ADD; the cache keeps the container for a later DEL"
                        ),
                    }
                    return Err(plugin_error(plugin, network, Operation::Add, source));
                }
            }
        }
        entry.result = result.unwrap_or_else(|| Value::Object(Map::new()));
        entry.started = None;
        self.write_cache(&entry)?;
        Ok(entry.result)
    }

    /// Checks the container's attachment with CHECK through every plugin (nothing to do when
    /// the network's version predates CHECK, 0.4.0, or the list turns it off).
    pub async fn check(&self, cached: &CachedAttachment) -> Result<(), CniOperationError> {
        let Some(network) = self.cached_network(cached) else {
            return Ok(());
        };
        if !network.runs_check() {
            return Ok(());
        }
        for plugin in &network.plugins {
            let stdin = plugin.stdin(
                &network,
                Some(&cached.result),
                &cached.attachment.capability_args,
            );
            self.run(
                plugin,
                &network,
                Operation::Check,
                &cached.attachment,
                true,
                &stdin,
            )
            .await
            .map_err(|source| plugin_error(plugin, &network, Operation::Check, source))?;
        }
        Ok(())
    }

    /// Detaches container `id`: DEL through its cached network's plugins in reverse order
    /// (with ADD's result as prevResult from version 0.4.0, as libcni), then forgets it.
    /// Nothing cached: nothing was attached (ADD caches before it runs). An ADD that never
    /// finished is undone for the plugins it started. An entry that cannot be decoded (a
    /// torn write) is detached with the current network and no prevResult, as libcni does
    /// with a cache it cannot read, and dropped once that DEL succeeds. A failed DEL keeps the
    /// entry.
    pub async fn del(&self, id: &str) -> Result<(), CniOperationError> {
        let cached = match self.cached(id) {
            Ok(Some(cached)) => cached,
            Ok(None) => return Ok(()),
            Err(err @ CniOperationError::DecodeCache { .. }) => {
                tracing::warn!(
                    container = %id,
                    err = &err as &dyn std::error::Error,
                    "a CNI cache entry cannot be decoded: DEL with the current network"
                );
                let network = self.load().map_err(|_| err)?;
                let attachment = Attachment {
                    container_id: id.to_owned(),
                    netns: PathBuf::new(),
                    ifname: crate::POD_INTERFACE.to_owned(),
                    args: Vec::new(),
                    capability_args: Map::new(),
                };
                let all = network.plugins.len();
                self.del_with(&network, all, &attachment, None, false)
                    .await?;
                return self.remove_cache(id);
            }
            Err(err) => return Err(err),
        };
        if let Some(network) = self.cached_network(&cached) {
            // A namespace that is gone (the node rebooted) is not passed, as the spec allows.
            let netns_exists = cached.attachment.netns.exists();
            let prev = Some(&cached.result)
                .filter(|r| !r.is_null() && network.passes_prev_result_to_del());
            let started = match (&cached.result, cached.started) {
                (Value::Null, Some(started)) => started,
                _ => network.plugins.len(),
            };
            self.del_with(&network, started, &cached.attachment, prev, netns_exists)
                .await?;
        }
        self.remove_cache(id)
    }

    /// What the cache holds for container `id`; an entry that cannot be decoded is an error.
    pub fn cached(&self, id: &str) -> Result<Option<CachedAttachment>, CniOperationError> {
        let path = self.cache_path(id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CniOperationError::ReadCache { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CniOperationError::DecodeCache { path, source })
    }

    /// Whether the cache holds container `id` as attached (its ADD finished).
    pub fn is_attached(&self, id: &str) -> bool {
        matches!(self.cached(id), Ok(Some(cached)) if !cached.result.is_null())
    }

    /// The containers the cache holds.
    pub fn cached_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_owned)
            })
            .collect()
    }

    /// DEL through the first `started` of `network`'s plugins, in reverse.
    async fn del_with(
        &self,
        network: &NetworkConfigList,
        started: usize,
        attachment: &Attachment,
        prev_result: Option<&Value>,
        with_netns: bool,
    ) -> Result<(), CniOperationError> {
        for plugin in network.plugins.iter().take(started).rev() {
            let stdin = plugin.stdin(network, prev_result, &attachment.capability_args);
            match self
                .run(
                    plugin,
                    network,
                    Operation::Del,
                    attachment,
                    with_netns,
                    &stdin,
                )
                .await
            {
                Ok(_) => {}
                Err(source) => return Err(plugin_error(plugin, network, Operation::Del, source)),
            }
        }
        Ok(())
    }

    async fn run(
        &self,
        plugin: &PluginConfig,
        network: &NetworkConfigList,
        operation: Operation,
        attachment: &Attachment,
        with_netns: bool,
        stdin: &[u8],
    ) -> Result<Vec<u8>, RunPluginError> {
        let path = exec::find_plugin(&plugin.plugin_type, &self.bin_dirs)?;
        let args = attachment.args_text();
        let invocation = exec::Invocation {
            operation,
            container_id: &attachment.container_id,
            netns: with_netns.then_some(attachment.netns.as_path()),
            ifname: &attachment.ifname,
            args: &args,
            bin_dirs: &self.bin_dirs,
        };
        tracing::debug!(
            network = %network.name,
            plugin = %plugin.plugin_type,
            container = %attachment.container_id,
            operation = operation.verb(),
            "running a CNI plugin"
        );
        exec::invoke(&path, &invocation, stdin).await
    }

    /// The cached configuration (an entry whose configuration is no longer a valid list, which
    /// only a hand edit makes, has none: it is logged, and DEL forgets the container).
    fn cached_network(&self, cached: &CachedAttachment) -> Option<NetworkConfigList> {
        NetworkConfigList::from_list(cached.config.clone())
            .inspect_err(|reason| {
                tracing::warn!(
                    container = %cached.attachment.container_id,
                    %reason,
                    "a CNI cache entry holds an invalid configuration"
                )
            })
            .ok()
    }

    fn cache_path(&self, id: &str) -> PathBuf {
        self.cache_dir.join(format!("{id}.json"))
    }

    /// Writes the cache file whole and durably (a temporary file, synced, renamed into place,
    /// and the directory synced).
    fn write_cache(&self, cached: &CachedAttachment) -> Result<(), CniOperationError> {
        let path = self.cache_path(&cached.attachment.container_id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.cache_dir)?;
            let temporary = path.with_extension("json.tmp");
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&serde_json::to_vec(cached).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(&self.cache_dir)?.sync_all()
        };
        write().map_err(|source| CniOperationError::WriteCache {
            path: path.clone(),
            source,
        })
    }

    fn remove_cache(&self, id: &str) -> Result<(), CniOperationError> {
        let path = self.cache_path(id);
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(CniOperationError::RemoveCache { path, source })
            }
            _ => Ok(()),
        }
    }
}

fn plugin_error(
    plugin: &PluginConfig,
    network: &NetworkConfigList,
    operation: Operation,
    source: RunPluginError,
) -> CniOperationError {
    CniOperationError::Plugin {
        plugin_type: plugin.plugin_type.clone(),
        network: network.name.clone(),
        operation,
        source,
    }
}

/// The IPv4 address a result gives the container's interface `ifname` (an address whose
/// `interface` index names a sandbox interface of that name), else its first IPv4 address.
pub fn result_ipv4(result: &Value, ifname: &str) -> Option<Ipv4Addr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let addresses: Vec<(Option<u64>, Ipv4Addr)> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| {
            let address = ip.get("address")?.as_str()?;
            let address = address.split('/').next()?.parse::<Ipv4Addr>().ok()?;
            Some((ip.get("interface").and_then(Value::as_u64), address))
        })
        .collect();
    let in_sandbox = |index: u64| {
        let interface = interfaces?.get(usize::try_from(index).ok()?)?;
        let sandbox = interface.get("sandbox").and_then(Value::as_str)?;
        (!sandbox.is_empty() && interface.get("name")?.as_str()? == ifname).then_some(())
    };
    addresses
        .iter()
        .find(|(index, _)| index.is_some_and(|i| in_sandbox(i).is_some()))
        .or(addresses.first())
        .map(|(_, address)| *address)
}

#[cfg(test)]
mod tests;
