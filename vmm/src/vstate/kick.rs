//! Kicking a vCPU thread out of KVM_RUN: a real-time signal whose handler sets the thread's
//! `kvm_run.immediate_exit`, so that KVM_RUN returns EINTR whether the signal lands inside
//! the ioctl or just before it.

// The signal handler writes through a raw pointer to the thread's kvm_run mapping.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

thread_local! {
    /// This thread's vCPU `kvm_run` mapping while it runs one, else null.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal cannot be set up or sent.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    /// sigaction failed.
    #[error("cannot install the vCPU kick signal handler")]
    Install(#[source] vmm_sys_util::errno::Error),
    /// The signal cannot be unblocked on a vCPU thread.
    #[error("cannot unblock the vCPU kick signal: {0}")]
    Unblock(String),
    /// pthread_kill failed.
    #[error("cannot signal a vCPU thread")]
    Send(#[source] vmm_sys_util::errno::Error),
}

/// The signal used: SIGRTMIN.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's live kvm_run mapping (set by
            // `KickTarget::register`, cleared before the VcpuFd can go away), and a volatile
            // byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
        }
    });
}

/// Installs the handler once per process.
pub fn install_kick_handler() -> Result<(), KickError> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    (*INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), handle_kick)))
        .map_err(KickError::Install)
}

/// Registration of the calling thread's vCPU with the kick handler; undone on drop.
#[derive(Debug)]
pub struct KickTarget(());

impl KickTarget {
    /// Makes kicks of the calling thread set `vcpu`'s immediate_exit. The returned guard must
    /// be dropped before `vcpu`.
    pub fn register(vcpu: &mut VcpuFd) -> Result<Self, KickError> {
        vmm_sys_util::signal::unblock_signal(kick_signal())
            .map_err(|e| KickError::Unblock(format!("{e:?}")))?;
        let run: *mut kvm_run = vcpu.get_kvm_run();
        KVM_RUN.with(|cell| cell.set(run));
        Ok(Self(()))
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        let _ = KVM_RUN.try_with(|cell| cell.set(std::ptr::null_mut()));
    }
}

/// Kicks the thread behind `handle`.
pub fn kick<T>(handle: &std::thread::JoinHandle<T>) -> Result<(), KickError> {
    handle.kill(kick_signal()).map_err(KickError::Send)
}
