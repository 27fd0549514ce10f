//! Seccomp filters for the VMM's own threads (the seccompiler crate): each vCPU thread, the
//! virtio notification thread, each network device's receive thread and the vsock muxer
//! install, before they touch anything
//! the guest controls, a filter that allows only the system calls that thread makes; any
//! other call kills the VMM (SIGSYS). When the VMM is the whole process (`baton vmm`, jailed
//! or not) its main thread installs a filter too, once the vCPUs run; a test's thread that
//! calls `run_config` is not filtered. `--no-seccomp` turns the filters off for debugging. The lists were taken from strace of every tiny-guest test, plus the calls of
//! paths the tests do not reach (flush, the entropy device, thread exit).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of VMM threads, each with its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU: KVM_RUN, the devices' port and MMIO handlers (serial output, register
    /// accesses, eventfd interrupts); no queue work, which the notification thread does.
    Vcpu,
    /// The virtio notification thread: epoll, eventfds, and what the devices' queues do
    /// (block I/O, net transmit, entropy, eventfd interrupts).
    DeviceIo,
    /// A network device's receive thread: epoll, the tap, eventfds.
    NetReceive,
    /// The vsock muxer: epoll, Unix sockets, eventfds.
    Vsock,
    /// The API: epoll, Unix sockets.
    Api,
    /// The console socket: epoll, accepting and reading its client, eventfds.
    Console,
    /// The main thread of `baton vmm` once the vCPUs run: waiting for the VM's end and for
    /// pause requests, kicking vCPU threads (tgkill), joining threads, closing and removing
    /// the sockets, exit.
    Main,
}

/// Every kind, in the order their filters are built.
const KINDS: [ThreadKind; 7] = [
    ThreadKind::Vcpu,
    ThreadKind::DeviceIo,
    ThreadKind::NetReceive,
    ThreadKind::Vsock,
    ThreadKind::Api,
    ThreadKind::Console,
    ThreadKind::Main,
];

/// A filter cannot be built or installed.
#[derive(Debug, thiserror::Error)]
#[error("seccomp filter for the {kind:?} thread")]
pub struct SeccompError {
    /// The thread kind.
    pub kind: ThreadKind,
    /// seccompiler's error.
    #[source]
    pub source: seccompiler::Error,
}

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`, read after an internal error for the report.
const KVM_GET_REGS: u64 = 0x8090_ae81;
/// `FIONBIO`, which `set_nonblocking` uses.
const FIONBIO: u64 = 0x5421;

/// Calls every VMM thread makes: locks, memory, signals (the kick), logging, exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
];

/// The notification thread's calls beyond [`COMMON`]: waiting on the queues' eventfds, then
/// running the queues (block I/O and eventfd reads). Only this thread runs queues: KVM catches
/// every QueueNotify write that names a queue (an ioeventfd each), and a vCPU sees only writes
/// that name none.
const DEVICE_IO: [libc::c_long; 9] = [
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
];

fn extra_calls(kind: ThreadKind) -> &'static [libc::c_long] {
    match kind {
        ThreadKind::Vcpu => &[libc::SYS_read],
        ThreadKind::DeviceIo => &DEVICE_IO,
        ThreadKind::NetReceive => &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_readv,
        ],
        ThreadKind::Console => &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
        ],
        ThreadKind::Vsock | ThreadKind::Api => &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_setsockopt,
            libc::SYS_getsockopt,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
            libc::SYS_fcntl,
        ],
        ThreadKind::Main => &[
            libc::SYS_tgkill,
            libc::SYS_exit_group,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ],
    }
}

fn arg_equals(index: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// Builds the filter of `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = || -> Result<BpfProgram, seccompiler::Error> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
            .iter()
            .chain(extra_calls(kind))
            .map(|&call| (call, Vec::new()))
            .collect();
        // Debug builds check a descriptor with F_GETFD before closing it.
        rules
            .entry(libc::SYS_fcntl)
            .or_insert(vec![arg_equals(1, libc::F_GETFD as u64)?]);
        match kind {
            ThreadKind::Vcpu => {
                rules.insert(
                    libc::SYS_ioctl,
                    vec![arg_equals(1, KVM_RUN)?, arg_equals(1, KVM_GET_REGS)?],
                );
            }
            ThreadKind::NetReceive | ThreadKind::Main | ThreadKind::DeviceIo => {}
            ThreadKind::Vsock | ThreadKind::Api => {
                rules.insert(libc::SYS_ioctl, vec![arg_equals(1, FIONBIO)?]);
                rules.insert(libc::SYS_socket, vec![arg_equals(0, libc::AF_UNIX as u64)?]);
            }
            ThreadKind::Console => {
                rules.insert(libc::SYS_ioctl, vec![arg_equals(1, FIONBIO)?]);
            }
        }
        let program: BpfProgram = SeccompFilter::new(
            rules,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?
        .try_into()?;
        Ok(program)
    };
    build().map_err(|source| SeccompError { kind, source })
}

/// The filters of a VM's threads, built before any thread starts (empty when filtering is
/// off), and whether the main thread takes one too.
#[derive(Debug, Clone)]
pub struct ThreadFilters {
    programs: Option<std::sync::Arc<BTreeMap<u8, BpfProgram>>>,
    main_thread: bool,
}

impl ThreadFilters {
    /// Builds every filter, or none when `enabled` is false. The main thread is not
    /// filtered unless [`Self::with_main_thread`] says so.
    pub fn new(enabled: bool) -> Result<Self, SeccompError> {
        if !enabled {
            return Ok(Self::disabled());
        }
        let mut filters = BTreeMap::new();
        for kind in KINDS {
            filters.insert(kind as u8, filter(kind)?);
        }
        Ok(Self {
            programs: Some(std::sync::Arc::new(filters)),
            main_thread: false,
        })
    }

    /// No filtering.
    pub fn disabled() -> Self {
        Self {
            programs: None,
            main_thread: false,
        }
    }

    /// The same filters, and the main thread filtered once the vCPUs run: for a VMM that
    /// is the whole process.
    pub fn with_main_thread(mut self) -> Self {
        self.main_thread = true;
        self
    }

    /// Installs `kind`'s filter on the calling thread (nothing when filtering is off).
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(filters) = &self.programs else {
            return Ok(());
        };
        let program = &filters[&(kind as u8)];
        seccompiler::apply_filter(program).map_err(|source| SeccompError { kind, source })
    }

    /// Installs the main thread's filter on the calling thread when this VMM filters its
    /// main thread.
    pub fn install_on_main_thread(&self) -> Result<(), SeccompError> {
        if self.main_thread {
            self.install(ThreadKind::Main)
        } else {
            Ok(())
        }
    }
}

/// Starts a thread named `name` that installs `kind`'s filter and then runs `body`; returns
/// once the filter is in place, or with the error that kept it from being installed.
pub fn spawn_filtered(
    name: String,
    filters: &ThreadFilters,
    kind: ThreadKind,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let filters = filters.clone();
    let (installed_tx, installed) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let result = filters.install(kind);
        let ok = result.is_ok();
        let _ = installed_tx.send(result);
        if ok {
            body();
        }
    })?;
    match installed.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(std::io::Error::other(error))
        }
        Err(_) => {
            let _ = thread.join();
            Err(std::io::Error::other(
                "the thread ended before its seccomp filter",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_builds() {
        for kind in KINDS {
            let program = filter(kind).unwrap();
            assert!(
                program.len() > 10,
                "{kind:?}: {} instructions",
                program.len()
            );
        }
        assert!(ThreadFilters::new(true).is_ok());
    }

    /// In a child process (this test binary again), the vCPU filter is installed and a
    /// call it does not allow is made: the kernel kills the process with SIGSYS.
    #[test]
    fn a_call_outside_the_filter_kills_the_process() {
        if std::env::var_os("BATON_SECCOMP_CHILD").is_some() {
            ThreadFilters::new(true)
                .unwrap()
                .install(ThreadKind::Vcpu)
                .unwrap();
            // Allowed: a write.
            eprintln!("filter installed");
            // Not allowed on a vCPU thread: opening a socket.
            let _ = std::net::UdpSocket::bind("127.0.0.1:0");
            unreachable!("the socket call must kill the process");
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::a_call_outside_the_filter_kills_the_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BATON_SECCOMP_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("filter installed"), "{stderr}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(output.status.signal(), Some(libc::SIGSYS), "{stderr}");
    }
}
