//! A cluster's state on disk (`<data dir>/clusters/<name>/cluster.json`), which `list`,
//! `status` and `destroy` read, also from a later run of the tool.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file's name in the cluster's directory.
pub const STATE_FILE: &str = "cluster.json";

/// The user's data directory for Baton: `$BATON_HOME`, else `$XDG_DATA_HOME/baton`, else
/// `~/.local/share/baton`.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BATON_HOME") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("baton");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/baton")
}

/// The directory of cluster `name`.
pub fn cluster_dir(name: &str) -> PathBuf {
    data_dir().join("clusters").join(name)
}

/// One node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The node's name (its hostname).
    pub name: String,
    /// `control-plane` or `worker`.
    pub role: String,
    /// Its address on the cluster network.
    pub ip: Ipv4Addr,
    /// The node's process (the sandbox monitor), while it runs.
    pub pid: Option<u32>,
    /// The node's directory.
    pub dir: PathBuf,
    /// Its pinned network namespace.
    pub netns: PathBuf,
    /// Its cgroup directories on the host.
    pub cgroups: Vec<PathBuf>,
    /// Its console log (init's output).
    pub console: PathBuf,
    /// When it was started (seconds since the epoch).
    pub started_at: u64,
    /// How long it took to turn Ready, in milliseconds, once measured.
    pub ready_after_ms: Option<u64>,
}

/// A cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    /// Its name.
    pub name: String,
    /// The provider its nodes run on.
    pub provider: String,
    /// When it was created (seconds since the epoch).
    pub created_at: u64,
    /// The unpacked image root its nodes' overlays use (kept while the cluster exists).
    pub image_root: PathBuf,
    /// The cluster network's pinned namespace.
    pub netns: PathBuf,
    /// The cluster network's gateway address (the bridge's).
    pub gateway: Ipv4Addr,
    /// Every namespace pin made for the cluster (recorded before it is made, so that a
    /// failed create removes it too).
    #[serde(default)]
    pub pins: Vec<PathBuf>,
    /// CPUs per node (`--cpus`); `None` in states written before it was recorded.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory per node, MiB (`--memory`); `None` in states written before it was recorded.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// The nodes.
    pub nodes: Vec<NodeState>,
    /// The forwarder from the host to the API server.
    pub forwarder_pid: Option<u32>,
    /// Its port on 127.0.0.1.
    pub api_port: u16,
    /// The kubeconfig holding the cluster's context.
    pub kubeconfig: PathBuf,
    /// The admin kubeconfig of the cluster alone.
    pub admin_kubeconfig: PathBuf,
}

/// Why a cluster's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStateError {
    /// The file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a cluster state.
    #[error("{path} is not a cluster state file")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl ClusterState {
    /// Reads the state of the cluster in `dir`.
    pub fn load(dir: &Path) -> Result<Self, ClusterStateError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ClusterStateError::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ClusterStateError::Malformed { path, source })
    }

    /// Writes the state into `dir` (through a temporary file and a rename).
    pub fn save(&self, dir: &Path) -> Result<(), ClusterStateError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("the state serializes");
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| ClusterStateError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::write(&tmp, text).map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming", &path))
    }

    /// The names of every cluster with a state directory.
    pub fn list_names() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(data_dir().join("clusters"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().join(STATE_FILE).exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Whether process `pid` runs (and is not a zombie) and its command line contains `marker`,
/// so that a pid the system reused for something else is never signalled.
pub fn process_matches(pid: u32, marker: &str) -> bool {
    process_alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|cmdline| {
                let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                text.contains(marker)
            })
            .unwrap_or(false)
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest.trim_start());
        !state.starts_with('Z')
    })
}

/// What only this node's process has on its command line, one of: a sandbox's namespace pin,
/// QEMU's console file (as QEMU is started now, or as an earlier Baton started it, whose
/// clusters may still run), or the console file in the VMM monitor's arguments (`provider` is
/// the cluster's).
pub fn node_markers(provider: &str, node: &NodeState) -> Vec<String> {
    match provider {
        "qemu" => vec![
            format!(
                "path={},append=on ",
                crate::qemu_node::option_value(&node.console)
            ),
            format!("file:{} ", node.console.display()),
        ],
        "microvm" => vec![format!("--console {} ", node.console.display())],
        _ => vec![format!("--netns {} ", node.netns.display())],
    }
}

/// An exclusive lock on a cluster's directory, held while a command changes the cluster
/// (`create`, `start`, `stop`, `destroy`), so that two never work on one cluster at once.
#[derive(Debug)]
pub struct ClusterLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl ClusterLock {
    /// Takes the lock of cluster `name` in `dir` (made when missing), or says who holds it.
    pub fn acquire(dir: &Path, name: &str) -> Result<Self, String> {
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|err| format!("opening {}: {err}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(ClusterLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(format!(
                "another baton command is working on cluster {name} (it holds {})",
                path.display()
            )),
            Err((_, errno)) => Err(format!("locking {}: {errno}", path.display())),
        }
    }
}

/// Whether some process is in the network namespace pinned at `pin` (a cluster's, from
/// this or another data directory).
pub fn namespace_in_use(pin: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(pinned) = std::fs::metadata(pin) else {
        return false;
    };
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries.flatten().any(|entry| {
                std::fs::metadata(entry.path().join("ns/net"))
                    .is_ok_and(|ns| ns.ino() == pinned.ino() && ns.dev() == pinned.dev())
            })
        })
        .unwrap_or(false)
}

/// Whether `node`'s process (of `cluster`) runs.
pub fn node_running(cluster: &ClusterState, node: &NodeState) -> bool {
    node.pid.is_some_and(|pid| {
        node_markers(&cluster.provider, node)
            .iter()
            .any(|marker| process_matches(pid, marker))
    })
}

/// What only this cluster's forwarder has on its command line.
pub fn forwarder_marker(state: &ClusterState) -> String {
    format!("cluster forward --netns {} ", state.netns.display())
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
