//! The first process of a pod's shared PID namespace (`baton pod-pid-holder`), what upstream's
//! pause container is there: a PID namespace whose first process ended takes no new processes,
//! and the processes orphaned in it become this one's to reap.

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// Reaps the processes orphaned in the namespace for as long as the namespace lives. A
/// namespace's first process gets from inside it only the signals it asks for: this one asks
/// for SIGCHLD alone (blocked and waited for, so nothing runs in a signal handler), so no
/// process of the pod can end it; the runtime ends it with SIGKILL when it removes the
/// sandbox. It leaves the runtime's session and process group, so that nothing aimed at
/// those reaches it.
pub fn run_pid_holder() -> ! {
    let _ = nix::unistd::setsid();
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    if let Err(err) = signals.thread_block() {
        eprintln!("pod-pid-holder: blocking signals: {err}");
        std::process::exit(1);
    }
    loop {
        loop {
            match waitpid(None::<nix::unistd::Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(err) => {
                    eprintln!("pod-pid-holder: reaping: {err}");
                    break;
                }
            }
        }
        let _ = signals.wait();
    }
}
