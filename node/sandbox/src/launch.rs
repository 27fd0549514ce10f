//! `baton sandbox run`: one node of the `process` provider (see the crate documentation).

use std::path::PathBuf;
use std::process::Command;

use baton_init::REBOOT_EXIT_CODE;
use baton_network::NetNs;
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::Pid;

use crate::cgroups::{NodeCgroups, NodeCgroupsError};
use crate::node_root::{NodeDirs, NodeRootError, enter_node_root, place_machine_config};

/// The value of `container` init sees: it tells init it runs in a sandbox.
pub const SANDBOX_NAME: &str = "baton";

/// `baton sandbox run` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct SandboxArgs {
    /// The image's unpacked root (the read-only lower layer).
    #[arg(long)]
    pub image_root: PathBuf,
    /// The node's directory (its upper layer, /var, and the mount point of its root).
    #[arg(long)]
    pub node_dir: PathBuf,
    /// The node's network namespace (a pinned namespace file).
    #[arg(long)]
    pub netns: PathBuf,
    /// The node's cgroup, relative to this process's (`baton/<cluster>/<node>`).
    #[arg(long)]
    pub cgroup: String,
    /// The node's machine configuration (YAML).
    #[arg(long)]
    pub machine_config: PathBuf,
    /// The node's memory limit, MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// The node's CPU limit, in CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Internal: this process boots the node once (the monitor starts it with this flag).
    #[arg(long, hide = true)]
    pub boot: bool,
}

/// Why a sandbox node could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunSandboxError {
    /// The machine configuration could not be read.
    #[error("reading --machine-config {path}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The node's cgroups could not be made or joined.
    #[error("setting up the node's cgroups")]
    Cgroups(#[from] NodeCgroupsError),
    /// The network namespace could not be entered.
    #[error("entering --netns {0}")]
    NetNs(PathBuf, #[source] baton_network::NetNsError),
    /// unshare(2) failed.
    #[error("making the node's namespaces")]
    Unshare(#[source] nix::Error),
    /// The node's root could not be set up.
    #[error("setting up the node's root")]
    Root(#[from] NodeRootError),
    /// A process could not be started or waited for.
    #[error("{0}")]
    Process(&'static str, #[source] std::io::Error),
    /// Signals could not be blocked.
    #[error("blocking signals")]
    Signals(#[source] nix::Error),
}

/// The signals passed on to the child (SIGTERM and SIGINT stop the node; SIGHUP).
fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks `signals` and SIGCHLD in this (only) thread, so that [`wait_forwarding`] waits for
/// them; children start with nothing blocked.
fn block_signals(signals: &SigSet) -> Result<(), RunSandboxError> {
    let mut blocked = *signals;
    blocked.add(Signal::SIGCHLD);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None).map_err(RunSandboxError::Signals)
}

/// Runs the node: the monitor (restarting the boot process while the node asks to reboot) or,
/// with `--boot`, one boot. Returns the exit code: init's.
pub fn run_sandbox(args: &SandboxArgs) -> Result<u8, RunSandboxError> {
    if args.boot {
        return boot_once(args);
    }
    let yaml =
        std::fs::read(&args.machine_config).map_err(|source| RunSandboxError::ReadConfig {
            path: args.machine_config.clone(),
            source,
        })?;
    let cgroups = NodeCgroups::for_this_process(&args.cgroup)?;
    cgroups.create_and_join()?;
    cgroups.limit(args.memory, args.cpus)?;
    place_machine_config(&NodeDirs::under(&args.node_dir), &yaml)?;
    let signals = forwarded_signals();
    block_signals(&signals)?;
    loop {
        let exe = std::env::current_exe()
            .map_err(|err| RunSandboxError::Process("finding this program", err))?;
        let mut child = Command::new(exe)
            .args(["sandbox", "run", "--boot"])
            .arg("--image-root")
            .arg(&args.image_root)
            .arg("--node-dir")
            .arg(&args.node_dir)
            .arg("--netns")
            .arg(&args.netns)
            .arg("--cgroup")
            .arg(&args.cgroup)
            .arg("--machine-config")
            .arg(&args.machine_config)
            .spawn()
            .map_err(|err| RunSandboxError::Process("starting the node's boot process", err))?;
        let code = wait_forwarding(&mut child, &signals)?;
        if code != REBOOT_EXIT_CODE {
            return Ok(code);
        }
        tracing::info!(node_dir = %args.node_dir.display(), "the node rebooted");
    }
}

fn boot_once(args: &SandboxArgs) -> Result<u8, RunSandboxError> {
    let netns =
        NetNs::open(&args.netns).map_err(|err| RunSandboxError::NetNs(args.netns.clone(), err))?;
    netns
        .enter()
        .map_err(|err| RunSandboxError::NetNs(args.netns.clone(), err))?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWPID,
    )
    .map_err(RunSandboxError::Unshare)?;
    enter_node_root(&args.image_root, &NodeDirs::under(&args.node_dir))?;
    let signals = forwarded_signals();
    block_signals(&signals)?;
    // The first child after unshare(CLONE_NEWPID) is PID 1 of the new namespace.
    let mut init = Command::new("/init")
        .env_clear()
        .env(baton_init::environment::SANDBOX_VARIABLE, SANDBOX_NAME)
        .env("PATH", "/usr/bin:/bin")
        .envs(std::env::var("BATON_LOG").ok().map(|v| ("BATON_LOG", v)))
        .spawn()
        .map_err(|err| RunSandboxError::Process("starting the node's /init", err))?;
    wait_forwarding(&mut init, &signals)
}

/// Waits for `child`, passing it the signals in `signals` meanwhile, and returns its exit code
/// (128 + the signal when a signal ended it). Single-threaded on purpose: after
/// unshare(CLONE_NEWPID) this process cannot make threads. `signals` and SIGCHLD must be
/// blocked (before `child` was started, see [`block_signals`]), so that each is waited for
/// here.
fn wait_forwarding(
    child: &mut std::process::Child,
    signals: &SigSet,
) -> Result<u8, RunSandboxError> {
    use std::os::unix::process::ExitStatusExt;
    let pid = Pid::from_raw(child.id() as i32);
    let mut waited = *signals;
    waited.add(Signal::SIGCHLD);
    loop {
        let status = child
            .try_wait()
            .map_err(|err| RunSandboxError::Process("waiting for the node", err))?;
        if let Some(status) = status {
            return Ok(match (status.code(), status.signal()) {
                (Some(code), _) => code as u8,
                (None, Some(signal)) => 128u8.saturating_add(signal as u8),
                _ => 1,
            });
        }
        match waited.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(signal) => {
                let _ = kill(pid, signal);
            }
        }
    }
}
