//! The end of a node's life: every remaining process stopped, file systems synced and
//! unmounted, and reboot(2) with power-off or restart; in a sandbox, init exits instead with a
//! code that tells its creator which of the two was asked for.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::environment::Environment;

/// Init's exit code in a sandbox when the node asked to reboot (0 means powered off).
pub const REBOOT_EXIT_CODE: u8 = 3;
/// How long the processes left after the services stopped get between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How often init looks whether they are gone in the meantime.
const REAP_POLL: Duration = Duration::from_millis(20);

/// What the node does when it shuts down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    /// Stop for good.
    PowerOff,
    /// Start again.
    Reboot,
}

impl PowerAction {
    /// Init's exit code in a sandbox.
    pub fn sandbox_exit_code(self) -> u8 {
        match self {
            PowerAction::PowerOff => 0,
            PowerAction::Reboot => REBOOT_EXIT_CODE,
        }
    }
}

/// As PID 1: sends SIGTERM to every other process, reaps them, and sends SIGKILL to those left
/// after a grace period. Does nothing in a process that is not PID 1.
pub fn terminate_remaining() {
    if std::process::id() != 1 {
        return;
    }
    let everyone = Pid::from_raw(-1);
    if kill(everyone, Signal::SIGTERM).is_err() {
        // ESRCH: no other process.
        return;
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if !reap_some() {
            return;
        }
        std::thread::sleep(REAP_POLL);
    }
    tracing::warn!("processes left after {TERM_GRACE:?}: SIGKILL");
    let _ = kill(everyone, Signal::SIGKILL);
    while reap_some() {
        std::thread::sleep(REAP_POLL);
    }
}

/// Reaps exited children; false when none is left.
fn reap_some() -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Unmounts everything but the root, innermost first: at once where nothing uses the mount
/// (so that a data disk's file system is clean before reboot(2)), lazily otherwise (it goes
/// when its last user does).
pub fn unmount_all() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| *t != "/")
        .collect();
    targets.reverse();
    for target in targets {
        // A busy mount is made read-only first (its file system is then clean, as
        // systemd-shutdown does), then detached.
        let unmounted = nix::mount::umount2(target, nix::mount::MntFlags::empty()).or_else(|_| {
            let _ = nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            );
            nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
        });
        if let Err(err) = unmounted {
            tracing::debug!(%target, %err, "unmount at shutdown");
        }
    }
}

/// Ends the node: on a machine, sync, unmount and reboot(2) (never returns); in a sandbox,
/// returns the exit code for init.
pub fn finish(environment: Environment, action: PowerAction) -> u8 {
    terminate_remaining();
    nix::unistd::sync();
    match environment {
        Environment::Sandbox => {
            tracing::info!(?action, "node stopped; leaving the sandbox");
            action.sandbox_exit_code()
        }
        Environment::Machine => {
            unmount_all();
            nix::unistd::sync();
            let mode = match action {
                PowerAction::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
                PowerAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
            };
            tracing::info!(?action, "node stopped");
            let err = nix::sys::reboot::reboot(mode).unwrap_err();
            tracing::error!(%err, "reboot(2) failed; halting here");
            // PID 1 must never exit: the kernel would panic.
            loop {
                std::thread::park();
            }
        }
    }
}
