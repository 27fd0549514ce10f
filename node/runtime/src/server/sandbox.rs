//! Pod sandboxes without a pause container: the runtime process unshares the namespaces a pod
//! needs, names the pod's hostname, brings loopback up, bind-mounts each namespace onto a file
//! under `sandboxes/<id>/` (which keeps it alive with no process in it), and returns to the
//! node's namespaces. Containers join the namespaces through those files. Safe only because
//! the runtime process has one thread.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use super::error_chain;
use crate::types::{Sandbox, SandboxConfig};
use baton_network::{LOOPBACK_INDEX, RouteSocket};

/// The node's own namespaces, held open so the runtime process can return to them.
#[derive(Debug)]
pub(crate) struct HomeNamespaces {
    network: File,
    uts: File,
    ipc: File,
}

impl HomeNamespaces {
    /// Opens the calling thread's namespaces.
    pub(crate) fn open() -> std::io::Result<Self> {
        Ok(Self {
            network: File::open("/proc/thread-self/ns/net")?,
            uts: File::open("/proc/thread-self/ns/uts")?,
            ipc: File::open("/proc/thread-self/ns/ipc")?,
        })
    }

    fn restore(&self, flags: CloneFlags) -> nix::Result<()> {
        if flags.contains(CloneFlags::CLONE_NEWNET) {
            setns(self.network.as_fd(), CloneFlags::CLONE_NEWNET)?;
        }
        if flags.contains(CloneFlags::CLONE_NEWUTS) {
            setns(self.uts.as_fd(), CloneFlags::CLONE_NEWUTS)?;
        }
        if flags.contains(CloneFlags::CLONE_NEWIPC) {
            setns(self.ipc.as_fd(), CloneFlags::CLONE_NEWIPC)?;
        }
        Ok(())
    }
}

/// The network namespace's file in a sandbox directory (see [`crate::sandbox_network_path`]).
const NETWORK: &str = "net";

/// Where the sandbox `id` lives under the runtime's `sandboxes` directory.
pub(crate) fn sandbox_dir(sandboxes: &Path, id: &str) -> PathBuf {
    sandboxes.join(id)
}

/// The sandbox's paths, as a created sandbox reports them.
fn describe(dir: &Path, config: &SandboxConfig) -> Sandbox {
    Sandbox {
        id: config.id.clone(),
        network: (!config.host_network).then(|| dir.join(NETWORK)),
        uts: (!config.host_network).then(|| dir.join("uts")),
        ipc: (!config.host_ipc).then(|| dir.join("ipc")),
        shm: dir.join("shm"),
    }
}

/// Creates the sandbox, or returns it when it exists already (the marker file `ready` is
/// written last).
pub(crate) fn create(
    sandboxes: &Path,
    config: &SandboxConfig,
    home: &HomeNamespaces,
) -> Result<Sandbox, String> {
    super::check_id(&config.id)?;
    let dir = sandbox_dir(sandboxes, &config.id);
    let sandbox = describe(&dir, config);
    if dir.join("ready").exists() {
        return Ok(sandbox);
    }
    remove(sandboxes, &config.id)?;
    let result = build(&dir, config, &sandbox, home);
    if let Err(message) = result {
        if let Err(cleanup) = remove(sandboxes, &config.id) {
            tracing::warn!(sandbox = %config.id, %cleanup, "cleaning up a failed sandbox");
        }
        return Err(format!("create sandbox {}: {message}", config.id));
    }
    Ok(sandbox)
}

fn build(
    dir: &Path,
    config: &SandboxConfig,
    sandbox: &Sandbox,
    home: &HomeNamespaces,
) -> Result<(), String> {
    fs::create_dir_all(dir.join("shm")).map_err(|err| format!("{}: {err}", dir.display()))?;
    let shm = dir.join("shm");
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={}", config.shm_size.max(4096)).as_str()),
    )
    .map_err(|err| format!("mount tmpfs on {}: {err}", shm.display()))?;

    let mut flags = CloneFlags::empty();
    if !config.host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    if !config.host_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(|err| format!("unshare namespaces: {err}"))?;
        let inside = inside_new_namespaces(config, sandbox);
        if let Err(err) = home.restore(flags) {
            // The one thread of this process is stranded in the pod's namespaces: every later
            // request would act there. Exit; the kubelet starts a new runtime process.
            tracing::error!(%err, "cannot return to the node's namespaces; exiting");
            std::process::exit(70);
        }
        inside?;
    }
    fs::write(dir.join("ready"), b"").map_err(|err| format!("{}: {err}", dir.display()))
}

/// What is done while the thread is in the pod's new namespaces.
fn inside_new_namespaces(config: &SandboxConfig, sandbox: &Sandbox) -> Result<(), String> {
    if let Some(uts) = &sandbox.uts {
        nix::unistd::sethostname(&config.hostname)
            .map_err(|err| format!("set hostname {:?}: {err}", config.hostname))?;
        bind_namespace("uts", uts)?;
    }
    if let Some(network) = &sandbox.network {
        RouteSocket::open()
            .and_then(|mut socket| socket.set_link(LOOPBACK_INDEX, None, None))
            .map_err(|err| format!("bring loopback up: {}", error_chain(&err)))?;
        bind_namespace("net", network)?;
    }
    if let Some(ipc) = &sandbox.ipc {
        bind_namespace("ipc", ipc)?;
    }
    Ok(())
}

fn bind_namespace(kind: &str, target: &Path) -> Result<(), String> {
    File::create(target).map_err(|err| format!("{}: {err}", target.display()))?;
    let source = format!("/proc/thread-self/ns/{kind}");
    mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|err| format!("bind {source} on {}: {err}", target.display()))
}

/// Removes the sandbox: unmounts its namespace files and /dev/shm and deletes its directory.
/// Removing a sandbox that does not exist succeeds.
pub(crate) fn remove(sandboxes: &Path, id: &str) -> Result<(), String> {
    super::check_id(id)?;
    let dir = sandbox_dir(sandboxes, id);
    if !dir.exists() {
        return Ok(());
    }
    let _ = fs::remove_file(dir.join("ready"));
    for name in ["net", "uts", "ipc", "shm"] {
        let path = dir.join(name);
        if path.exists() {
            match umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(err) => return Err(format!("unmount {}: {err}", path.display())),
            }
        }
    }
    fs::remove_dir_all(&dir).map_err(|err| format!("remove sandbox {id}: {}", error_chain(&err)))
}

/// The ids of the sandboxes on disk.
pub(crate) fn list(sandboxes: &Path) -> Vec<String> {
    fs::read_dir(sandboxes)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
