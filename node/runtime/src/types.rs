//! What the kubelet asks of the runtime and what it answers: pod sandboxes, containers, exec
//! sessions and their states. These travel between the kubelet and the runtime process as JSON.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A pod sandbox to create: the namespaces every container of one pod shares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Sandbox id (the kubelet uses the pod's uid).
    pub id: String,
    /// The pod's hostname (the UTS namespace's name); ignored when `host_network`.
    pub hostname: String,
    /// Share the node's network (and UTS) namespace instead of making one.
    pub host_network: bool,
    /// Share the node's IPC namespace instead of making one.
    pub host_ipc: bool,
    /// Size of the pod's /dev/shm tmpfs in bytes.
    pub shm_size: u64,
    /// Give the pod one PID namespace its containers share (`shareProcessNamespace`).
    #[serde(default)]
    pub share_pid: bool,
}

/// A created sandbox: bind-mounted namespace files that containers join by path, and the pod's
/// shared /dev/shm. `None` means the node's own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Sandbox id, as in [`SandboxConfig::id`].
    pub id: String,
    /// The network namespace file.
    pub network: Option<PathBuf>,
    /// The UTS namespace file.
    pub uts: Option<PathBuf>,
    /// The IPC namespace file.
    pub ipc: Option<PathBuf>,
    /// The pod's PID namespace file, when its containers share one.
    #[serde(default)]
    pub pid: Option<PathBuf>,
    /// The pod's /dev/shm (a tmpfs mount point).
    pub shm: PathBuf,
}

/// A container to create from an OCI bundle the caller prepared (config.json plus the mounted
/// root filesystem the config names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Container id: letters, digits, `_`, `+`, `-`, `.`.
    pub id: String,
    /// The bundle directory holding config.json.
    pub bundle: PathBuf,
    /// Where the container's stdout and stderr go, in the CRI log format.
    pub log_path: PathBuf,
    /// Rotate the log when it grows past this many bytes (0: never).
    pub log_max_size: u64,
    /// How many log files to keep, the live one included (at least 1).
    pub log_max_files: u32,
    /// Whether the container's stdin stays open for writers (`io/<id>/stdin`, see
    /// [`crate::stdin_path`]); without it stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Whether the bundle's process has a terminal (`process.terminal`): the runtime then
    /// holds the terminal's master, logs its output as stdout and feeds it the stdin FIFO.
    #[serde(default)]
    pub tty: bool,
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created, its process waiting to be started.
    Created,
    /// Its process runs.
    Running,
    /// Its process is gone.
    Exited,
    /// The runtime does not know (state unreadable).
    Unknown,
}

/// How a container's process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code; 128 + the signal number when a signal ended it (as a shell reports it).
    pub exit_code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// When it ended (RFC 3339).
    pub finished_at: String,
    /// The runtime did not see the exit itself (it was restarted meanwhile), so the code is
    /// not known.
    pub unknown: bool,
}

/// A container as the runtime sees it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Container id.
    pub id: String,
    /// Its state.
    pub state: ContainerState,
    /// The pid of its init process (in the node's pid namespace), while it has one.
    pub pid: Option<i32>,
    /// When it was created (RFC 3339).
    pub created_at: Option<String>,
    /// When it was started (RFC 3339).
    pub started_at: Option<String>,
    /// How it ended, once it has.
    pub exit: Option<ExitStatus>,
    /// The bundle it was created from.
    pub bundle: PathBuf,
}

/// A process to run inside a running container (`kubectl exec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecConfig {
    /// The container to run it in.
    pub container_id: String,
    /// Command and arguments.
    pub args: Vec<String>,
    /// Run it with a terminal: the caller passes the terminal's follower side as stdin, stdout
    /// and stderr.
    pub tty: bool,
}
