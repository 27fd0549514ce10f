//! `baton vmm` flags.

use std::path::PathBuf;

use super::jail::JailFile;

/// Flags of `baton vmm`. Each flag overrides the same setting in `--config`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VmmArgs {
    /// Kernel image: a bzImage or an ELF vmlinux with a 64-bit entry point.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio archive, compressed or not); repeat to concatenate several in order.
    #[arg(long, value_name = "PATH")]
    pub initrd: Vec<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Guest memory in MiB, at least 64 [default: 128].
    #[arg(long, value_name = "MiB")]
    pub memory: Option<u64>,
    /// Serial console: output to `stdout` or a file path (appended to), or `socket:PATH`, a
    /// Unix socket the VMM makes whose client reads the output and types input
    /// [default: stdout].
    #[arg(long, value_name = "stdout|PATH|socket:PATH")]
    pub console: Option<String>,
    /// A raw disk image as a virtio block device (`/dev/vda`, then `vdb`, ...); `,ro` makes
    /// it read-only. Repeat for more disks; replaces the file's `drives`.
    #[arg(long, value_name = "PATH[,ro]")]
    pub disk: Vec<String>,
    /// A virtio network interface on tap device TAP (attached if it exists, made
    /// otherwise), with the guest's MAC address [default: random, locally administered],
    /// opened in network namespace PATH [default: the VMM's]. Repeat for more; replaces the
    /// file's `network-interfaces`.
    #[arg(long, value_name = "TAP[,mac=MAC][,netns=PATH]")]
    pub net: Vec<String>,
    /// A virtio socket device: the guest's context ID (3 or more) and the host side's Unix
    /// socket, made by the VMM (write `CONNECT PORT\n` to it to reach guest port PORT); the
    /// guest reaches host port P at `UDS_PATH_P`. Replaces the file's `vsock`.
    #[arg(long, value_name = "CID,UDS_PATH")]
    pub vsock: Option<String>,
    /// The VMM's API socket (status, pause, resume, metrics, shutdown); made by the VMM,
    /// removed when it ends. Replaces the file's `api-sock`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Back guest memory with 2 MiB huge pages (hugetlb; the host's pool of 2 MiB pages must
    /// hold them: they are reserved when the VM starts). Same as `machine.hugepages`.
    #[arg(long)]
    pub hugepages: bool,
    /// Boot an ELF kernel through its 64-bit Linux entry even when it offers a PVH entry
    /// (by default the PVH entry is used when offered, as Firecracker does).
    #[arg(long)]
    pub no_pvh: bool,
    /// Run the VM in a jail: a new mount namespace holding only the files the VM uses, a new
    /// PID namespace, a cgroup with memory and CPU limits, and, once the devices are open,
    /// the user and group of `--jail-uid`/`--jail-gid` without capabilities. Same as the
    /// file's `jail` section.
    #[arg(long)]
    pub jail: bool,
    /// The user ID the jailed VMM runs as [default: 65534, nobody]; implies `--jail`.
    #[arg(long, value_name = "UID")]
    pub jail_uid: Option<u32>,
    /// The group ID the jailed VMM runs as [default: 65534, nogroup]; implies `--jail`.
    #[arg(long, value_name = "GID")]
    pub jail_gid: Option<u32>,
    /// The jail cgroup's memory limit, guest memory included [default: guest memory + 128];
    /// implies `--jail`.
    #[arg(long, value_name = "MiB")]
    pub jail_memory: Option<u64>,
    /// The jail cgroup's CPU limit in CPUs, fractions allowed [default: one per vCPU];
    /// implies `--jail`.
    #[arg(long, value_name = "CPUS")]
    pub jail_cpus: Option<f64>,
    /// Run the VMM's threads without their seccomp filters (for debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    /// JSON configuration file (sections `boot-source`, `machine`, `console`, `drives`, `network-interfaces`, `vsock`, `api-sock`); flags override it.
    #[arg(long, value_name = "FILE.json")]
    pub config: Option<PathBuf>,
}

impl VmmArgs {
    /// The jail the flags and the file's `jail` section ask for, flags winning; `None` when
    /// neither asks for one.
    pub fn jail_settings(&self, file: Option<JailFile>) -> Option<JailFile> {
        let flagged = self.jail
            || self.jail_uid.is_some()
            || self.jail_gid.is_some()
            || self.jail_memory.is_some()
            || self.jail_cpus.is_some();
        if !flagged && file.is_none() {
            return None;
        }
        let file = file.unwrap_or_default();
        Some(JailFile {
            uid: self.jail_uid.or(file.uid),
            gid: self.jail_gid.or(file.gid),
            memory_mib: self.jail_memory.or(file.memory_mib),
            cpus: self.jail_cpus.or(file.cpus),
        })
    }
}
