//! A CNI runtime (spec 1.0): the kubelet's other pod network, for users who bring their own
//! plugins (Calico, Flannel, Cilium, the reference plugins). ADD runs a network's plugins in
//! order, each given the previous one's result; DEL runs them in reverse with the result ADD
//! gave; CHECK asks each whether the attachment is still as ADD left it. What ADD gave is kept
//! in a cache file per container (as libcni's `/var/lib/cni/results`), so that DEL and CHECK
//! use the configuration the container was attached with, also after a restart or a change of
//! configuration.

mod config;
mod exec;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use config::{LoadConfigError, NetworkConfigList, PluginConfig};
pub use exec::{Operation, PLUGIN_TIMEOUT, PluginError};

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
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs (the pod's namespace, name and uid for Kubernetes).
    pub args: Vec<(String, String)>,
    /// Values for the plugins' declared capabilities (`portMappings`, ...).
    pub capability_args: Map<String, Value>,
}

/// What the cache holds for an attached container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAttachment {
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The configuration list it was attached with.
    pub config: Value,
    /// The result of ADD.
    pub result: Value,
}

/// A CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A plugin failed (libcni's words).
    #[error("plugin type={plugin_type:?} name={network:?} failed ({})", operation.verb())]
    Plugin {
        plugin_type: String,
        network: String,
        operation: Operation,
        #[source]
        source: PluginError,
    },
    /// The cache file could not be read or written.
    #[error("{action} the CNI cache file {}", path.display())]
    Cache {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The cached configuration is no longer a valid list.
    #[error("the CNI cache file {} holds an invalid configuration: {reason}", path.display())]
    CachedConfig { path: PathBuf, reason: String },
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

impl CniPlugins {
    /// The network the configuration directory holds now.
    pub fn load(&self) -> Result<NetworkConfigList, LoadConfigError> {
        NetworkConfigList::load(&self.conf_dir)
    }

    /// Attaches the container to `network`: runs ADD through the plugins in order and caches
    /// the result. When a plugin fails, what the earlier ones did is undone with DEL (as
    /// container runtimes tear a failed sandbox's network down).
    pub async fn add(
        &self,
        network: &NetworkConfigList,
        attachment: &Attachment,
    ) -> Result<Value, CniError> {
        let mut result: Option<Value> = None;
        for plugin in &network.plugins {
            let stdin = plugin.stdin(network, result.as_ref(), &attachment.capability_args);
            let run = self
                .run(plugin, network, Operation::Add, attachment, true, &stdin)
                .await
                .and_then(|out| {
                    serde_json::from_slice::<Value>(&out)
                        .ok()
                        .filter(Value::is_object)
                        .ok_or_else(|| PluginError::BadResult {
                            reason: format!(
                                "not a JSON object: {:?}",
                                String::from_utf8_lossy(&out)
                            ),
                        })
                });
            match run {
                Ok(value) => result = Some(value),
                Err(source) => {
                    if let Err(err) = self
                        .del_with(network, attachment, result.as_ref(), true)
                        .await
                    {
                        tracing::warn!(
                            container = %attachment.container_id,
                            err = &err as &dyn std::error::Error,
                            "undoing a failed CNI ADD"
                        );
                    }
                    return Err(plugin_error(plugin, network, Operation::Add, source));
                }
            }
        }
        let result = result.unwrap_or_else(|| Value::Object(Map::new()));
        let cached = CachedAttachment {
            attachment: attachment.clone(),
            config: network.to_value(),
            result: result.clone(),
        };
        self.write_cache(&cached)?;
        Ok(result)
    }

    /// Checks the container's attachment with CHECK through every plugin (nothing to do when
    /// the network's version predates CHECK or turns it off).
    pub async fn check(&self, cached: &CachedAttachment) -> Result<(), CniError> {
        let network = self.cached_network(cached)?;
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

    /// Detaches container `id`: DEL through its cached network's plugins in reverse order,
    /// then forgets it. Without a cache entry, nothing was attached (ADD caches before it
    /// returns), so there is nothing to do.
    pub async fn del(&self, id: &str) -> Result<(), CniError> {
        let Some(cached) = self.cached(id)? else {
            return Ok(());
        };
        let network = self.cached_network(&cached)?;
        // A namespace that is gone (the node rebooted) is not passed, as the spec allows.
        let netns_exists = cached.attachment.netns.exists();
        self.del_with(
            &network,
            &cached.attachment,
            Some(&cached.result),
            netns_exists,
        )
        .await?;
        let path = self.cache_path(id);
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(CniError::Cache {
                action: "remove",
                path,
                source,
            }),
            _ => Ok(()),
        }
    }

    /// What the cache holds for container `id`.
    pub fn cached(&self, id: &str) -> Result<Option<CachedAttachment>, CniError> {
        let path = self.cache_path(id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CniError::Cache {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| CniError::Cache {
                action: "decode",
                path,
                source: std::io::Error::other(err),
            })
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

    async fn del_with(
        &self,
        network: &NetworkConfigList,
        attachment: &Attachment,
        result: Option<&Value>,
        netns_exists: bool,
    ) -> Result<(), CniError> {
        for plugin in network.plugins.iter().rev() {
            let stdin = plugin.stdin(network, result, &attachment.capability_args);
            self.run(
                plugin,
                network,
                Operation::Del,
                attachment,
                netns_exists,
                &stdin,
            )
            .await
            .map_err(|source| plugin_error(plugin, network, Operation::Del, source))?;
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
    ) -> Result<Vec<u8>, PluginError> {
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

    fn cached_network(&self, cached: &CachedAttachment) -> Result<NetworkConfigList, CniError> {
        NetworkConfigList::from_list(cached.config.clone()).map_err(|reason| {
            CniError::CachedConfig {
                path: self.cache_path(&cached.attachment.container_id),
                reason,
            }
        })
    }

    fn cache_path(&self, id: &str) -> PathBuf {
        self.cache_dir.join(format!("{id}.json"))
    }

    /// Writes the cache file whole (a temporary file renamed into place).
    fn write_cache(&self, cached: &CachedAttachment) -> Result<(), CniError> {
        let path = self.cache_path(&cached.attachment.container_id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.cache_dir)?;
            let temporary = path.with_extension("json.tmp");
            std::fs::write(
                &temporary,
                serde_json::to_vec(cached).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&temporary, &path)
        };
        write().map_err(|source| CniError::Cache {
            action: "write",
            path: path.clone(),
            source,
        })
    }
}

fn plugin_error(
    plugin: &PluginConfig,
    network: &NetworkConfigList,
    operation: Operation,
    source: PluginError,
) -> CniError {
    CniError::Plugin {
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
