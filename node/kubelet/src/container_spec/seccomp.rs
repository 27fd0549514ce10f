//! The container's seccomp filter from `seccompProfile` (container over pod): none for
//! `Unconfined`, for an unset profile (the kubelet's `seccompDefault` is off) and for privileged
//! containers; Baton's own RuntimeDefault profile; or a `Localhost` profile read as OCI seccomp
//! JSON from the kubelet's seccomp directory.
//!
//! The RuntimeDefault profile is an allowlist in the spirit of Docker's and containerd's:
//! denied calls fail with EPERM; what ordinary programs need is allowed; kernel-wide or
//! privileged operations (modules, kexec, reboot, mounts, namespaces, keyrings, ptrace, BPF,
//! perf, clock setting, swap, accounting, quotas, io_uring, `userfaultfd`, `vm86`, ...) are
//! allowed only when the container holds the capability the kernel would check, or not at all.
//! Every name is one the node's libseccomp (Debian's 2.5.4) resolves; libcontainer skips, with a
//! warning, names its libseccomp does not know.

use std::collections::HashSet;
use std::path::{Component, Path};

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

use super::ContainerConfigError;
use super::security::EffectiveSecurityContext;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const AF_VSOCK: u64 = 40;
/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Calls every container may make.
const ALLOWED: &[&str] = &[
    // Files and directories.
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "flock",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "ioctl",
    "lchown",
    "lchown32",
    "link",
    "linkat",
    "lseek",
    "_llseek",
    "lstat",
    "lstat64",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "sendfile64",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    // Extended attributes.
    "fgetxattr",
    "flistxattr",
    "fremovexattr",
    "fsetxattr",
    "getxattr",
    "lgetxattr",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lsetxattr",
    "removexattr",
    "setxattr",
    // Waiting for events.
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "fanotify_mark",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pselect6",
    "pselect6_time64",
    "select",
    "_newselect",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    // Asynchronous I/O (not io_uring).
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    // Memory.
    "brk",
    "cachestat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    // Processes and threads (clone and clone3 have their own rules).
    "arch_prctl",
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "modify_ldt",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "process_mrelease",
    "restart_syscall",
    "rseq",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setpgid",
    "setpriority",
    "setrlimit",
    "setsid",
    "tgkill",
    "tkill",
    "ugetrlimit",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    // Credentials.
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getuid",
    "getuid32",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setuid",
    "setuid32",
    // Signals.
    "alarm",
    "pause",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sigaction",
    "sigaltstack",
    "signal",
    "sigpending",
    "sigprocmask",
    "sigreturn",
    "sigsuspend",
    // Time (reading it; setting needs CAP_SYS_TIME).
    "adjtimex",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "getitimer",
    "gettimeofday",
    "nanosleep",
    "setitimer",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "times",
    // Sockets (socket itself has its own rule).
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socketcall",
    "socketpair",
    // System V and POSIX IPC.
    "ipc",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    // Sandboxing oneself, system information.
    "getrandom",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "sysinfo",
    "uname",
];

/// Calls allowed only to containers that hold a capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "finit_module", "init_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
            "userfaultfd",
        ],
    ),
    (Capability::SysRawio, &["ioperm", "iopl"]),
    (
        Capability::SysTime,
        &[
            "clock_adjtime",
            "clock_adjtime64",
            "clock_settime",
            "clock_settime64",
            "settimeofday",
            "stime",
        ],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "migrate_pages",
            "move_pages",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
];

/// The `personality` values glibc and common tools use (Linux, 32-bit Linux, address
/// randomisation off, query).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut syscall = LinuxSyscall::default();
    syscall.set_names(names.iter().map(|n| n.to_string()).collect());
    syscall.set_action(action);
    syscall
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    let builder = match value_two {
        Some(v) => builder.value_two(v),
        None => builder,
    };
    builder
        .build()
        .expect("every field of a seccomp argument has a default")
}

/// Baton's RuntimeDefault profile for a container with capabilities `caps`.
pub fn runtime_default(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let mut allowed: Vec<&str> = ALLOWED.to_vec();
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(cap) {
            allowed.extend(names.iter().copied());
        }
    }
    allowed.sort_unstable();
    allowed.dedup();
    let sys_admin = caps.contains(&Capability::SysAdmin);

    let mut syscalls = vec![rule(&allowed, LinuxSeccompAction::ScmpActAllow)];
    for value in PERSONALITIES {
        let mut personality = rule(&["personality"], LinuxSeccompAction::ScmpActAllow);
        personality.set_args(Some(vec![arg(
            0,
            value,
            None,
            LinuxSeccompOperator::ScmpCmpEq,
        )]));
        syscalls.push(personality);
    }
    let mut socket = rule(&["socket"], LinuxSeccompAction::ScmpActAllow);
    socket.set_args(Some(vec![arg(
        0,
        AF_VSOCK,
        None,
        LinuxSeccompOperator::ScmpCmpNe,
    )]));
    syscalls.push(socket);
    if !sys_admin {
        // clone without namespace flags. libcontainer 0.7 reads a masked comparison as
        // `(arg & valueTwo) == value` (runc reads `(arg & value) == valueTwo`), so the mask goes
        // in valueTwo: with runc's reading this rule would allow every clone, never deny one.
        let mut clone = rule(&["clone"], LinuxSeccompAction::ScmpActAllow);
        clone.set_args(Some(vec![arg(
            0,
            0,
            Some(CLONE_NAMESPACE_FLAGS),
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )]));
        syscalls.push(clone);
        // clone3's flags are behind a pointer and cannot be checked: report it missing so
        // that libc falls back to clone.
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(ENOSYS));
        syscalls.push(clone3);
    }

    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActErrno);
    seccomp.set_default_errno_ret(Some(EPERM));
    seccomp.set_architectures(Some(vec![
        Arch::ScmpArchX86_64,
        Arch::ScmpArchX86,
        Arch::ScmpArchX32,
    ]));
    seccomp.set_syscalls(Some(syscalls));
    seccomp
}

/// The container's seccomp filter, `None` for unconfined.
pub fn seccomp(
    sc: &EffectiveSecurityContext,
    caps: &HashSet<Capability>,
    profile_root: &Path,
) -> Result<Option<LinuxSeccomp>, ContainerConfigError> {
    if sc.privileged {
        return Ok(None);
    }
    let Some(profile) = sc.seccomp_profile.as_ref() else {
        return Ok(None);
    };
    match profile.type_.as_str() {
        "Unconfined" => Ok(None),
        "RuntimeDefault" => Ok(Some(runtime_default(caps))),
        "Localhost" => {
            let relative = profile.localhost_profile.as_deref().unwrap_or_default();
            let path = Path::new(relative);
            let safe = !relative.is_empty()
                && path
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
            if !safe {
                return Err(ContainerConfigError::SeccompProfilePath {
                    profile: relative.to_string(),
                });
            }
            let path = profile_root.join(path);
            let bytes = std::fs::read(&path).map_err(|source| {
                ContainerConfigError::SeccompProfileRead {
                    path: path.clone(),
                    source,
                }
            })?;
            let parsed: LinuxSeccomp = serde_json::from_slice(&bytes)
                .map_err(|source| ContainerConfigError::SeccompProfileParse { path, source })?;
            Ok(Some(parsed))
        }
        other => Err(ContainerConfigError::SeccompProfileType {
            kind: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container_spec::security::DEFAULT_CAPABILITIES;
    use k8s_openapi::api::core::v1::SeccompProfile;

    /// How a filter decides: the action of the first rule naming the call whose argument
    /// checks pass (checks on the same argument are alternatives, as libcontainer adds them
    /// as separate rules), else the default. Masked comparisons read as libcontainer 0.7
    /// reads them.
    fn decide(
        profile: &LinuxSeccomp,
        name: &str,
        args: &[u64],
    ) -> (LinuxSeccompAction, Option<u32>) {
        for syscall in profile.syscalls().as_deref().unwrap_or_default() {
            if !syscall.names().iter().any(|n| n == name) {
                continue;
            }
            let checks = syscall.args().as_deref().unwrap_or_default();
            let passes = |a: &LinuxSeccompArg| {
                let value = args.get(a.index()).copied().unwrap_or(0);
                match a.op() {
                    LinuxSeccompOperator::ScmpCmpEq => value == a.value(),
                    LinuxSeccompOperator::ScmpCmpNe => value != a.value(),
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        let mask = a.value_two().unwrap_or(0);
                        value & mask == a.value() & mask
                    }
                    other => panic!("unexpected operator {other:?}"),
                }
            };
            let mut indexes: Vec<usize> = checks.iter().map(|a| a.index()).collect();
            indexes.dedup();
            let ok = if indexes.len() == checks.len() {
                checks.iter().all(passes)
            } else {
                checks.iter().any(passes)
            };
            if ok {
                return (syscall.action(), syscall.errno_ret());
            }
        }
        (profile.default_action(), profile.default_errno_ret())
    }

    fn allowed(profile: &LinuxSeccomp, name: &str, args: &[u64]) -> bool {
        decide(profile, name, args).0 == LinuxSeccompAction::ScmpActAllow
    }

    fn default_caps() -> HashSet<Capability> {
        DEFAULT_CAPABILITIES.into_iter().collect()
    }

    #[test]
    fn ordinary_programs_can_run() {
        let profile = runtime_default(&default_caps());
        // What busybox sh, sleep, cat, wget and httpd (and the runtime's last steps) call.
        for name in [
            "execve",
            "brk",
            "arch_prctl",
            "set_tid_address",
            "set_robust_list",
            "rseq",
            "prlimit64",
            "mmap",
            "munmap",
            "mprotect",
            "getuid",
            "geteuid",
            "getpid",
            "getppid",
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigreturn",
            "uname",
            "readlink",
            "getcwd",
            "stat",
            "newfstatat",
            "fstat",
            "openat",
            "read",
            "write",
            "close",
            "fcntl",
            "ioctl",
            "dup2",
            "pipe2",
            "wait4",
            "vfork",
            "fork",
            "exit_group",
            "nanosleep",
            "clock_nanosleep",
            "connect",
            "bind",
            "listen",
            "accept",
            "accept4",
            "setsockopt",
            "poll",
            "select",
            "sendto",
            "recvfrom",
            "getsockname",
            "chdir",
            "kill",
            "getdents64",
            "lseek",
            "sendfile",
            "time",
            "gettimeofday",
            "clock_gettime",
            "sysinfo",
            "umask",
            "setsid",
            "setpgid",
            "capset",
            "capget",
            "prctl",
            "setgroups",
            "setresuid",
            "setresgid",
            "close_range",
            "chroot",
            "futex",
            "getrandom",
            "sched_getaffinity",
        ] {
            assert!(allowed(&profile, name, &[]), "{name} must be allowed");
        }
        // fork through clone (SIGCHLD | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID) and threads.
        assert!(allowed(&profile, "clone", &[0x0120_0011]));
        assert!(allowed(&profile, "clone", &[0x003d_0f00]));
        assert!(allowed(&profile, "socket", &[2, 1, 0]), "AF_INET");
        assert!(allowed(&profile, "socket", &[1, 1, 0]), "AF_UNIX");
        assert!(allowed(&profile, "personality", &[0xffff_ffff]));
    }

    #[test]
    fn dangerous_calls_are_denied() {
        let profile = runtime_default(&default_caps());
        for name in [
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "mount",
            "umount2",
            "ptrace",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "unshare",
            "setns",
            "open_by_handle_at",
            "pivot_root",
            "acct",
            "settimeofday",
            "clock_settime",
            "lookup_dcookie",
            "userfaultfd",
            "quotactl",
            "vm86",
            "vm86old",
            "io_uring_setup",
            "sethostname",
            "syslog",
            "iopl",
            "process_vm_readv",
            "mbind",
            "fsopen",
            "open_tree",
        ] {
            assert_eq!(
                decide(&profile, name, &[]),
                (LinuxSeccompAction::ScmpActErrno, Some(EPERM)),
                "{name} must be denied"
            );
        }
        for flag in [
            0x0002_0000u64,
            0x1000_0000,
            0x2000_0000,
            0x4000_0000,
            0x0800_0000,
        ] {
            assert!(
                !allowed(&profile, "clone", &[flag | 0x11]),
                "clone with {flag:#x}"
            );
        }
        assert_eq!(
            decide(&profile, "clone3", &[]),
            (LinuxSeccompAction::ScmpActErrno, Some(ENOSYS)),
            "clone3 reports ENOSYS so libc falls back to clone"
        );
        assert!(!allowed(&profile, "socket", &[AF_VSOCK, 1, 0]));
        assert!(!allowed(&profile, "personality", &[0x0040_0000]));
    }

    #[test]
    fn capabilities_open_their_calls() {
        let mut caps = default_caps();
        caps.insert(Capability::SysAdmin);
        caps.insert(Capability::SysPtrace);
        caps.insert(Capability::SysTime);
        let profile = runtime_default(&caps);
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "ptrace",
            "clock_settime",
            "clone3",
        ] {
            assert!(allowed(&profile, name, &[]), "{name}");
        }
        assert!(
            allowed(&profile, "clone", &[0x1000_0011]),
            "namespaces with CAP_SYS_ADMIN"
        );
        assert!(!allowed(&profile, "kexec_load", &[]));
        assert!(!allowed(&profile, "keyctl", &[]));

        let mut no_chroot = default_caps();
        no_chroot.remove(&Capability::SysChroot);
        assert!(!allowed(&runtime_default(&no_chroot), "chroot", &[]));
    }

    #[test]
    fn profile_shape() {
        let profile = runtime_default(&default_caps());
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(
            profile.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        // Allowed and cap-gated names never overlap with names that have their own rules.
        for special in ["clone", "clone3", "socket", "personality"] {
            assert!(!ALLOWED.contains(&special), "{special}");
        }
        let json = serde_json::to_value(&profile).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["architectures"][0], "SCMP_ARCH_X86_64");
    }

    fn sc(kind: Option<&str>, localhost: Option<&str>) -> EffectiveSecurityContext {
        EffectiveSecurityContext {
            seccomp_profile: kind.map(|k| SeccompProfile {
                type_: k.to_string(),
                localhost_profile: localhost.map(str::to_string),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn profile_selection() {
        let root = tempfile::tempdir().unwrap();
        let caps = default_caps();
        assert!(
            seccomp(&sc(None, None), &caps, root.path())
                .unwrap()
                .is_none()
        );
        assert!(
            seccomp(&sc(Some("Unconfined"), None), &caps, root.path())
                .unwrap()
                .is_none()
        );
        assert!(
            seccomp(&sc(Some("RuntimeDefault"), None), &caps, root.path())
                .unwrap()
                .is_some()
        );
        let mut privileged = sc(Some("RuntimeDefault"), None);
        privileged.privileged = true;
        assert!(seccomp(&privileged, &caps, root.path()).unwrap().is_none());

        std::fs::create_dir_all(root.path().join("profiles")).unwrap();
        std::fs::write(
            root.path().join("profiles/audit.json"),
            r#"{"defaultAction": "SCMP_ACT_LOG", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}], "comment": "x"}"#,
        )
        .unwrap();
        let local = seccomp(
            &sc(Some("Localhost"), Some("profiles/audit.json")),
            &caps,
            root.path(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(local.default_action(), LinuxSeccompAction::ScmpActLog);
        assert_eq!(
            local.syscalls().as_ref().unwrap()[0].names(),
            &vec!["reboot".to_string()]
        );

        let err = |kind: &str, path: Option<&str>| {
            seccomp(&sc(Some(kind), path), &caps, root.path()).unwrap_err()
        };
        assert!(matches!(
            err("Localhost", Some("missing.json")),
            ContainerConfigError::SeccompProfileRead { .. }
        ));
        assert!(matches!(
            err("Localhost", Some("../etc/passwd")),
            ContainerConfigError::SeccompProfilePath { .. }
        ));
        assert!(matches!(
            err("Localhost", Some("/etc/passwd")),
            ContainerConfigError::SeccompProfilePath { .. }
        ));
        std::fs::write(root.path().join("bad.json"), "not json").unwrap();
        assert!(matches!(
            err("Localhost", Some("bad.json")),
            ContainerConfigError::SeccompProfileParse { .. }
        ));
        assert_eq!(
            err("Bogus", None).to_string(),
            "seccompProfile type \"Bogus\" is not supported"
        );
    }
}
