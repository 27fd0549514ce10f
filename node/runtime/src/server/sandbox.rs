//! Pod sandboxes without a pause container: the runtime process unshares the namespaces a pod
//! needs, names the pod's hostname, brings loopback up, bind-mounts each namespace onto a file
//! under `sandboxes/<id>/` (which keeps it alive with no process in it), and returns to the
//! node's namespaces. Containers join the namespaces through those files. Safe only because
//! the runtime process has one thread.
//!
//! A PID namespace is the exception: one whose first process ended takes no new ones. So a pod
//! whose containers share one (`shareProcessNamespace`) gets a holder process as its PID 1
//! (`baton pod-pid-holder`, [`crate::run_pid_holder`]), as upstream's pause container is there;
//! it reaps what is orphaned in the namespace, and removing the sandbox kills it.

use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
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
    pid: File,
}

impl HomeNamespaces {
    /// Opens the calling thread's namespaces.
    pub(crate) fn open() -> std::io::Result<Self> {
        Ok(Self {
            network: File::open("/proc/thread-self/ns/net")?,
            uts: File::open("/proc/thread-self/ns/uts")?,
            ipc: File::open("/proc/thread-self/ns/ipc")?,
            pid: File::open("/proc/thread-self/ns/pid")?,
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
        if flags.contains(CloneFlags::CLONE_NEWPID) {
            // The namespace the process's next children are born in: its own again.
            setns(self.pid.as_fd(), CloneFlags::CLONE_NEWPID)?;
        }
        Ok(())
    }
}

/// The network namespace's file in a sandbox directory (see [`crate::sandbox_network_path`]).
const NETWORK: &str = "net";
/// The PID namespace's file in a sandbox directory.
const PID: &str = "pid";
/// The file holding the pid (in the node's namespace) of the PID namespace's holder.
const PID_HOLDER: &str = "pid-holder";
/// The `baton` subcommand of a pod PID namespace's holder process ([`crate::run_pid_holder`]).
pub const PID_HOLDER_COMMAND: &str = "pod-pid-holder";

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
        pid: config.share_pid.then(|| dir.join(PID)),
        shm: dir.join("shm"),
    }
}

/// Creates the sandbox, or returns it when it exists already (the marker file `ready` is
/// written last).
pub(crate) fn create(
    sandboxes: &Path,
    config: &SandboxConfig,
    home: &HomeNamespaces,
    pid_holders: &mut Vec<OwnedFd>,
) -> Result<Sandbox, String> {
    super::check_id(&config.id)?;
    let dir = sandbox_dir(sandboxes, &config.id);
    let sandbox = describe(&dir, config);
    if dir.join("ready").exists() {
        // A PID namespace whose holder ended is dead (nothing can be born in it): the holder
        // and its namespace are made again, and the containers restart in the new one.
        if config.share_pid && !holder_runs(&dir) {
            renew_pid_holder(&dir, home, pid_holders)
                .map_err(|message| format!("create sandbox {}: {message}", config.id))?;
        }
        return Ok(sandbox);
    }
    remove(sandboxes, &config.id, pid_holders)?;
    let result = build(&dir, config, &sandbox, home);
    if let Err(message) = result {
        if let Err(cleanup) = remove(sandboxes, &config.id, pid_holders) {
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
    if config.share_pid {
        start_pid_holder(dir, home)?;
    }
    fs::write(dir.join("ready"), b"").map_err(|err| format!("{}: {err}", dir.display()))
}

/// Starts the holder of a new PID namespace (its PID 1), records its pid and bind-mounts its
/// namespace onto the sandbox's `pid` file. A holder whose sandbox cannot be finished is killed
/// and reaped at once (nothing can have joined its namespace yet).
fn start_pid_holder(dir: &Path, home: &HomeNamespaces) -> Result<(), String> {
    // The process's next child is born in a new PID namespace, as its first process.
    unshare(CloneFlags::CLONE_NEWPID).map_err(|err| format!("unshare a PID namespace: {err}"))?;
    let spawned = std::process::Command::new("/proc/self/exe")
        .arg(PID_HOLDER_COMMAND)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(err) = home.restore(CloneFlags::CLONE_NEWPID) {
        // Every later container would be born in this pod's PID namespace. Exit; the kubelet
        // starts a new runtime process.
        tracing::error!(%err, "cannot return to the node's PID namespace; exiting");
        if let Ok(mut holder) = spawned {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        std::process::exit(70);
    }
    let mut holder =
        spawned.map_err(|err| format!("start the pod's PID namespace holder: {err}"))?;
    let pid = holder.id();
    let recorded = (|| {
        let target = dir.join(PID);
        File::create(&target).map_err(|err| format!("{}: {err}", target.display()))?;
        let source = format!("/proc/{pid}/ns/pid");
        mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|err| format!("bind {source} on {}: {err}", target.display()))?;
        fs::write(dir.join(PID_HOLDER), pid.to_string())
            .map_err(|err| format!("{}: {err}", dir.display()))
    })();
    if recorded.is_err() {
        let _ = holder.kill();
        let _ = holder.wait();
    }
    recorded
}

/// Kills the sandbox's PID namespace holder (and with it whatever is left in the namespace),
/// if the process of the recorded pid is still the one holding the sandbox's namespace (asked
/// through a pidfd, so that a pid used again since cannot be hit); adds its pidfd to
/// `pid_holders`, to be reaped once it is gone. A holder that already ended and waits to be reaped (killed
/// from outside) is added too. Not waited for here: it ends only once the namespace's
/// processes are reaped, and some are this process's children.
fn stop_pid_holder(dir: &Path, pid_holders: &mut Vec<OwnedFd>) {
    let Some(pid) = recorded_holder(dir) else {
        return;
    };
    let Ok(pidfd) = super::open_pidfd(pid) else {
        return;
    };
    if !holds_namespace(dir, pid) {
        return;
    }
    if rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL).is_ok() {
        pid_holders.push(pidfd);
    }
}

/// The pid the sandbox recorded for its PID namespace's holder.
fn recorded_holder(dir: &Path) -> Option<i32> {
    fs::read_to_string(dir.join(PID_HOLDER))
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
}

/// Whether process `pid` is in the sandbox's PID namespace: true of its holder also once it
/// ended, until it is reaped.
fn holds_namespace(dir: &Path, pid: i32) -> bool {
    let identity = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    };
    let holding = identity(&dir.join(PID));
    holding.is_some() && identity(Path::new(&format!("/proc/{pid}/ns/pid"))) == holding
}

/// Whether the sandbox's PID namespace holder runs: not once it is ending or ended (also
/// while the kernel tears its namespace down, and until it is reaped), since then nothing can
/// be born in the namespace.
fn holder_runs(dir: &Path) -> bool {
    /// The kernel's PF_EXITING task flag: the process is exiting.
    const EXITING: u64 = 0x4;
    let runs = || -> Option<bool> {
        let pid = recorded_holder(dir)?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name: state, ppid, pgrp, session, tty_nr, tpgid, flags.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ended = matches!(fields.first()?.chars().next()?, 'Z' | 'X');
        let exiting = fields.get(6)?.parse::<u64>().ok()? & EXITING != 0;
        Some(!ended && !exiting && holds_namespace(dir, pid))
    };
    runs().unwrap_or(false)
}

/// Whether the sandbox's PID namespace can still take containers: true of a sandbox that
/// does not share one; false once the namespace's holder ended (killed from outside, say),
/// until [`crate::ContainerRuntime::create_sandbox`] makes the namespace again.
pub fn pid_namespace_alive(sandbox: &Sandbox) -> bool {
    match sandbox.pid.as_deref().and_then(Path::parent) {
        Some(dir) => holder_runs(dir),
        None => true,
    }
}

/// Replaces the ended holder of the sandbox's PID namespace with a new holder of a new
/// namespace. The old holder, when it is this process's child, is reaped at the next request
/// (see [`stop_pid_holder`]).
fn renew_pid_holder(
    dir: &Path,
    home: &HomeNamespaces,
    pid_holders: &mut Vec<OwnedFd>,
) -> Result<(), String> {
    stop_pid_holder(dir, pid_holders);
    let target = dir.join(PID);
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(err) => return Err(format!("unmount {}: {err}", target.display())),
    }
    tracing::info!(sandbox = %dir.display(), "the PID namespace's holder ended; making a new one");
    start_pid_holder(dir, home)
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

/// Removes the sandbox: kills its PID namespace holder (adding it to `pid_holders`),
/// unmounts its namespace files and /dev/shm and deletes its directory. Removing a sandbox
/// that does not exist succeeds.
pub(crate) fn remove(
    sandboxes: &Path,
    id: &str,
    pid_holders: &mut Vec<OwnedFd>,
) -> Result<(), String> {
    super::check_id(id)?;
    let dir = sandbox_dir(sandboxes, id);
    if !dir.exists() {
        return Ok(());
    }
    let _ = fs::remove_file(dir.join("ready"));
    stop_pid_holder(&dir, pid_holders);
    for name in ["net", "uts", "ipc", PID, "shm"] {
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
