//! The first process of a pod's shared PID namespace (`baton pod-pid-holder`), what upstream's
//! pause container is there: a PID namespace whose first process ended takes no new processes,
//! and the processes orphaned in it become this one's to reap.

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// Reaps the processes orphaned in the namespace until SIGTERM or SIGINT ends it (a
/// namespace's first process gets only the signals it asks for; they are blocked and waited
/// for, so nothing runs in a signal handler).
pub fn run_pid_holder() -> ! {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(signal);
    }
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
        if let Ok(Signal::SIGTERM | Signal::SIGINT) = signals.wait() {
            std::process::exit(0);
        }
    }
}
