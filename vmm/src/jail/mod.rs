//! `baton vmm --jail`: the VM runs in a child process that is PID 1 of a new PID namespace,
//! in a cgroup with the jail's memory and CPU limits, in a mount namespace whose root holds
//! only what the VM uses (`root`), and that drops to the jail's user and group without
//! capabilities once its devices are open (`privileges`). The outer process stays outside:
//! it makes the cgroup and the jail's mount point, waits for the child (passing on SIGTERM,
//! SIGINT and SIGHUP as SIGKILL, since a namespace's PID 1 ignores signals it has no handler
//! for), and removes the cgroup, the mount point and the sockets afterwards, also when the
//! child was killed. Its exit code is the child's: the guest's, 1 when the VMM failed (the
//! child printed why), 128 + the signal when a signal ended it.
//!
//! The jail forks and goes on running Rust code in the child, so it must start from a
//! process with one thread (`baton vmm` is one); [`run_jailed`] refuses otherwise.

#![allow(unsafe_code)]

pub mod cgroup;
pub mod privileges;
pub mod root;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use std::time::Instant;

use nix::sched::CloneFlags;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::config::{ConsoleConfig, JailConfig, VmConfig};
use cgroup::{JailCgroup, JailCgroupError};
use privileges::DropPrivileges;
use root::{JailEntry, JailRootError, enter_jail_root, jail_entries};

/// The jail cannot be set up, or the jailed VMM cannot be waited for.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The configuration asks for no jail.
    #[error("no jail configured (--jail)")]
    NotConfigured,
    /// The process has other threads.
    #[error(
        "--jail: the VMM must start the jail from a process with one thread; this one has {threads}"
    )]
    Threads {
        /// Threads counted in /proc/self/status.
        threads: usize,
    },
    /// A path cannot be shown in the jail.
    #[error(transparent)]
    Root(#[from] JailRootError),
    /// The cgroup cannot be made, joined or removed.
    #[error(transparent)]
    Cgroup(#[from] JailCgroupError),
    /// A process or namespace step failed.
    #[error("--jail: cannot {action}")]
    Process {
        /// What was being done.
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The jailed VMM was killed by a signal nobody passed on: the cgroup's memory limit,
    /// or someone outside.
    #[error("the jailed VMM was killed by {signal}{}", if *.out_of_memory { " (out of memory: its cgroup's limit, --jail-memory, was reached)" } else { "" })]
    Killed {
        /// The signal.
        signal: Signal,
        /// Whether the cgroup's OOM killer counted a kill.
        out_of_memory: bool,
    },
}

fn process_error(action: &'static str) -> impl FnOnce(nix::Error) -> JailError {
    move |errno| JailError::Process {
        action,
        source: errno.into(),
    }
}

/// Threads of this process, from /proc/self/status.
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What the outer process made and removes when the jailed VMM has ended.
#[derive(Debug, Default)]
struct Leftovers {
    root: Option<PathBuf>,
    cgroup: Option<JailCgroup>,
    /// The sockets' paths, once the jailed VMM (which makes them) was started.
    sockets: Vec<PathBuf>,
    console_made: Option<PathBuf>,
}

impl Leftovers {
    /// Removes everything; `vmm_failed` also removes a console file the jail made and the
    /// VMM never wrote to. What cannot be removed is logged.
    fn remove(&self, vmm_failed: bool) {
        for socket in &self.sockets {
            if let Err(error) = std::fs::remove_file(socket)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, path = %socket.display(), "socket file not removed");
            }
        }
        if vmm_failed
            && let Some(console) = &self.console_made
            && std::fs::metadata(console).is_ok_and(|m| m.len() == 0)
        {
            let _ = std::fs::remove_file(console);
        }
        if let Some(root) = &self.root
            && let Err(error) = std::fs::remove_dir(root)
        {
            tracing::warn!(%error, path = %root.display(), "jail mount point not removed");
        }
        if let Some(cgroup) = &self.cgroup
            && let Err(error) = cgroup.remove()
        {
            tracing::warn!(error = %error_chain(&error), "jail cgroup not removed");
        }
    }
}

/// The signals the outer process waits for (SIGCHLD, and those that stop the VM unless
/// this process was started ignoring them, as under `nohup`), blocked from the start to the
/// end of the clean-up, and SIGCHLD's disposition made the default so the child's end is
/// reported.
struct SignalGuard {
    waited: SigSet,
    previous_mask: SigSet,
    previous_sigchld: SigAction,
}

impl SignalGuard {
    fn block() -> Result<Self, JailError> {
        let mut waited = SigSet::empty();
        waited.add(Signal::SIGCHLD);
        for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            if !ignored(signal)? {
                waited.add(signal);
            }
        }
        let mut previous_mask = SigSet::empty();
        nix::sys::signal::sigprocmask(
            SigmaskHow::SIG_BLOCK,
            Some(&waited),
            Some(&mut previous_mask),
        )
        .map_err(process_error("block signals"))?;
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: the default disposition installs no handler.
        let previous_sigchld = unsafe { nix::sys::signal::sigaction(Signal::SIGCHLD, &default) }
            .map_err(process_error("reset SIGCHLD's disposition"))?;
        Ok(Self {
            waited,
            previous_mask,
            previous_sigchld,
        })
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        // SAFETY: restores the disposition this process had.
        let _ = unsafe { nix::sys::signal::sigaction(Signal::SIGCHLD, &self.previous_sigchld) };
        let _ =
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.previous_mask), None);
    }
}

/// Whether this process ignores `signal`.
fn ignored(signal: Signal) -> Result<bool, JailError> {
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction only writes the current one into `current`,
    // which has room for it; no disposition changes, even for a moment.
    let rc = unsafe {
        libc::sigaction(
            signal as libc::c_int,
            std::ptr::null(),
            current.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(JailError::Process {
            action: "read a signal's disposition",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: sigaction succeeded and filled it in (it was zeroed before anyway).
    let current = unsafe { current.assume_init() };
    Ok(current.sa_sigaction == libc::SIG_IGN)
}

/// Runs the VM of `config` in its jail and returns the exit code `baton vmm` ends with.
pub fn run_jailed(config: &VmConfig, started: Instant) -> Result<u8, JailError> {
    let jail = config.jail.ok_or(JailError::NotConfigured)?;
    let threads = thread_count();
    if threads != 1 {
        return Err(JailError::Threads { threads });
    }
    // From here to the end of the clean-up, a signal waits to be taken.
    let signals = SignalGuard::block()?;
    let mut leftovers = Leftovers::default();
    // The jail shows the console file, so it must exist before: made here as the VMM would
    // make it, and removed again if the VMM fails before writing to it.
    if let ConsoleConfig::File(path) = &config.console
        && !path.exists()
    {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| JailError::Process {
                action: "make the console file",
                source,
            })?;
        leftovers.console_made = Some(path.clone());
    }
    let result = jail_entries(config)
        .map_err(JailError::from)
        .and_then(|(config, entries)| {
            prepare_and_run(&config, &jail, &entries, &mut leftovers, &signals, started)
        });
    let failed = !matches!(result, Ok(code) if code != 1);
    leftovers.remove(failed);
    drop(signals);
    result
}

fn prepare_and_run(
    config: &VmConfig,
    jail: &JailConfig,
    entries: &[JailEntry],
    leftovers: &mut Leftovers,
    signals: &SignalGuard,
    started: Instant,
) -> Result<u8, JailError> {
    let root = std::env::temp_dir().join(format!("baton-vmm-jail.{}", std::process::id()));
    std::fs::create_dir(&root).map_err(|source| JailError::Process {
        action: "make the jail's mount point",
        source,
    })?;
    leftovers.root = Some(root.clone());
    let cgroup = JailCgroup::for_this_process(&cgroup_name(), jail)?;
    cgroup.create()?;
    leftovers.cgroup = Some(cgroup.clone());

    nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(process_error("make a PID namespace"))?;
    let (go_read, go_write) = nix::unistd::pipe().map_err(process_error("make a pipe"))?;
    // SAFETY: this process has one thread (checked above), so the child may go on running
    // ordinary code: no lock can be held by a thread that does not exist in it.
    match unsafe { nix::unistd::fork() }.map_err(process_error("fork the jailed VMM"))? {
        ForkResult::Child => {
            drop(go_write);
            let _ = nix::sys::signal::sigprocmask(
                SigmaskHow::SIG_SETMASK,
                Some(&signals.previous_mask),
                None,
            );
            let code = match jailed_child(config, jail, entries, &root, go_read, started) {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("error: {}", error_chain(&*error));
                    1
                }
            };
            std::process::exit(code.into())
        }
        ForkResult::Parent { child } => {
            drop(go_read);
            leftovers.sockets = config
                .api_sock
                .iter()
                .chain(config.vsock.iter().map(|v| &v.uds_path))
                .chain(match &config.console {
                    ConsoleConfig::Socket(path) => Some(path),
                    _ => None,
                })
                .cloned()
                .collect();
            let mut go = std::fs::File::from(go_write);
            if let Err(error) = cgroup.add(child.as_raw()) {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(error.into());
            }
            // The child waits for this byte: it runs in the cgroup from its first step.
            // The pipe stays open until the child has ended: its hang-up tells the child
            // that this process is gone.
            let _ = go.write_all(b"g");
            let result = wait_for(child, &signals.waited, &cgroup);
            drop(go);
            result
        }
    }
}

/// The jail cgroup's name: this process's ID and a random part (PIDs repeat across PID
/// namespaces, and a v2 cgroup's name is host-wide).
fn cgroup_name() -> String {
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    format!(
        "baton-vmm-{}-{:08x}",
        std::process::id(),
        u32::from_le_bytes(random)
    )
}

/// Waits for the jailed VMM to end, passing SIGTERM, SIGINT and SIGHUP on as SIGKILL.
fn wait_for(child: Pid, waited: &SigSet, cgroup: &JailCgroup) -> Result<u8, JailError> {
    let mut passed_on = None;
    loop {
        let signal = waited.wait().map_err(process_error("wait for signals"))?;
        if signal != Signal::SIGCHLD {
            tracing::info!(%signal, "stopping the jailed VMM");
            passed_on = Some(signal);
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            continue;
        }
        match nix::sys::wait::waitpid(child, Some(WaitPidFlag::WNOHANG))
            .map_err(process_error("wait for the jailed VMM"))?
        {
            WaitStatus::Exited(_, code) => return Ok(code as u8),
            WaitStatus::Signaled(_, signal, _) => {
                if let Some(asked) = passed_on {
                    return Ok(128 + asked as u8);
                }
                return Err(JailError::Killed {
                    signal,
                    out_of_memory: cgroup.oom_kills().is_some_and(|n| n > 0),
                });
            }
            _ => {}
        }
    }
}

/// The jailed VMM: waits for the outer process to put it in the cgroup, enters the jail's
/// root, runs the VM (dropping privileges once the devices are open) and returns its exit
/// code.
fn jailed_child(
    config: &VmConfig,
    jail: &JailConfig,
    entries: &[JailEntry],
    root: &Path,
    outer: OwnedFd,
    started: Instant,
) -> Result<u8, Box<dyn std::error::Error>> {
    // Ends with the outer process, which is the one users signal.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(process_error("ask for SIGKILL when the outer process ends"))?;
    let mut byte = [0u8; 1];
    if (&std::fs::File::from(outer.try_clone()?))
        .read(&mut byte)
        .ok()
        != Some(1)
    {
        return Err("--jail: the outer process ended before the VM started".into());
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC)
        .map_err(process_error("make a mount namespace"))?;
    enter_jail_root(root, entries)?;
    let privileges = DropPrivileges {
        uid: jail.uid,
        gid: jail.gid,
        outer_alive: outer.as_raw_fd(),
    };
    let outcome = crate::microvm::start_vm(config, started, Some(&privileges), true)?;
    tracing::info!(exit = %outcome.exit, "guest ended");
    Ok(outcome.exit.exit_code())
}

/// An error and its sources, joined by ": " (how `baton` prints errors).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
