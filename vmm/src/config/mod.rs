//! VM configuration: flags and the JSON file merged into one validated [`VmConfig`], checked
//! before any resource (KVM, memory, files for writing) is taken.

pub mod args;
pub mod boot_source;
pub mod console;
pub mod drive;
pub mod file;
pub mod jail;
pub mod machine;
pub mod net;
pub mod vsock;

use std::path::PathBuf;

pub use args::VmmArgs;
pub use boot_source::BootSourceConfig;
pub use console::ConsoleConfig;
pub use drive::DriveConfig;
pub use file::ConfigFile;
pub use jail::JailConfig;
pub use machine::MachineConfig;
pub use net::NetConfig;
pub use vsock::VsockConfig;

use crate::arch::x86_64::layout::virtio_mmio_slot;
use crate::arch::x86_64::linux_boot::BootProtocol;
use crate::devices::virtio::MMIO_SLOT_LEN;
use boot_source::{DEFAULT_CMDLINE, MAX_CMDLINE_LEN};
use drive::MAX_DEVICES;
use machine::{DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};

/// A configuration that cannot be used; each message names the flag (and the file field).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No kernel given.
    #[error("--kernel (boot-source.kernel) is required")]
    MissingKernel,
    /// A file given cannot be opened for reading.
    #[error("{flag} {}: cannot be read", path.display())]
    Unreadable {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be opened.
        #[source]
        source: std::io::Error,
    },
    /// A path given is not a regular file.
    #[error("{flag} {}: not a regular file", path.display())]
    NotAFile {
        /// The flag that named the file.
        flag: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The configuration file is not valid JSON of the expected shape.
    #[error("--config {}: invalid configuration file", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What serde_json found (line, column, field).
        #[source]
        source: serde_json::Error,
    },
    /// The vCPU count is out of range.
    #[error("--cpus (machine.cpus) {cpus}: must be between 1 and {MAX_VCPUS}")]
    Cpus {
        /// The count given.
        cpus: u32,
    },
    /// The memory size is out of range.
    #[error(
        "--memory (machine.memory_mib) {memory_mib} MiB: must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB"
    )]
    Memory {
        /// The size given.
        memory_mib: u64,
    },
    /// Huge pages asked for with a size that is not a whole number of them.
    #[error(
        "--memory (machine.memory_mib) {memory_mib} MiB: with --hugepages it must be a multiple of 2 MiB"
    )]
    HugepagesSize {
        /// The size given.
        memory_mib: u64,
    },
    /// The command line is too long for the kernel.
    #[error("--cmdline (boot-source.cmdline): {len} bytes, at most {MAX_CMDLINE_LEN} fit")]
    CmdlineTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The command line does not fit once the virtio-mmio devices are announced on it.
    #[error(
        "--cmdline (boot-source.cmdline): {len} bytes with the virtio-mmio device announcements, at most {MAX_CMDLINE_LEN} fit"
    )]
    CmdlineTooLongWithDevices {
        /// Its length in bytes with the announcements.
        len: usize,
    },
    /// A disk cannot be used.
    #[error("--disk (drives) {value}: {reason}")]
    Disk {
        /// The value or path given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A network interface cannot be used.
    #[error("--net (network-interfaces) {value}: {reason}")]
    Net {
        /// The value or tap name given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The vsock device cannot be used.
    #[error("--vsock (vsock) {value}: {reason}")]
    Vsock {
        /// The value given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The API socket path cannot be used.
    #[error("--api-sock (api-sock) {}: {reason}", path.display())]
    ApiSock {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// More virtio devices than the VM has interrupt lines for.
    #[error("--disk, --net and --vsock: {count} devices, at most {MAX_DEVICES} together")]
    TooManyDevices {
        /// Disks and network interfaces given.
        count: usize,
    },
    /// The command line has a NUL byte.
    #[error("--cmdline (boot-source.cmdline): contains a NUL byte")]
    CmdlineNul,
    /// The jail's settings cannot be used.
    #[error("{flag} {value}: {reason}")]
    Jail {
        /// The flag (and file field).
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The console destination is not usable.
    #[error("--console (console) {value:?}: {reason}")]
    Console {
        /// The value given.
        value: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
}

/// A complete, validated VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel, initramfs parts, command line.
    pub boot_source: BootSourceConfig,
    /// vCPUs and memory.
    pub machine: MachineConfig,
    /// Serial console output.
    pub console: ConsoleConfig,
    /// Disks, as virtio block devices in this order.
    pub drives: Vec<DriveConfig>,
    /// Network interfaces, as virtio-net devices in this order.
    pub nets: Vec<NetConfig>,
    /// The socket device, if any.
    pub vsock: Option<VsockConfig>,
    /// Whether the VMM's threads run under their seccomp filters (`--no-seccomp` turns
    /// them off).
    pub seccomp: bool,
    /// The API socket's path: free, in an existing directory.
    pub api_sock: Option<PathBuf>,
    /// Whether (and how) `baton vmm` runs the VM in a jail (`crate::jail`).
    pub jail: Option<JailConfig>,
    /// Which entry of an ELF kernel that offers a PVH entry boots it (`--no-pvh`).
    pub boot_protocol: BootProtocol,
}

/// A virtio device of the VM, in the order devices take MMIO slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioDeviceKind {
    /// `drives[index]`.
    Block(usize),
    /// `nets[index]`.
    Net(usize),
    /// The socket device.
    Vsock,
    /// The entropy device every VM has.
    Rng,
}

/// Where a virtio device sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    /// What it is.
    pub kind: VirtioDeviceKind,
    /// Guest physical address of its registers.
    pub base: u64,
    /// Its interrupt line (GSI).
    pub irq: u32,
}

impl VmConfig {
    /// Builds the configuration from the flags, reading `--config` if given; flags win.
    pub fn from_args(args: &VmmArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => ConfigFile::read(path)?,
            None => ConfigFile::default(),
        };
        Self::merge(args, file)
    }

    /// Merges flags over a parsed file and validates the result.
    pub fn merge(args: &VmmArgs, file: ConfigFile) -> Result<Self, ConfigError> {
        let machine = MachineConfig::new(
            args.cpus.or(file.machine.cpus).unwrap_or(DEFAULT_VCPUS),
            args.memory
                .or(file.machine.memory_mib)
                .unwrap_or(DEFAULT_MEMORY_MIB),
        )?;
        let machine = if args.hugepages || file.machine.hugepages == Some(true) {
            machine.with_hugepages()?
        } else {
            machine
        };
        let kernel = args
            .kernel
            .clone()
            .or(file.boot_source.kernel)
            .ok_or(ConfigError::MissingKernel)?;
        let initrds = if args.initrd.is_empty() {
            file.boot_source.initrds
        } else {
            args.initrd.clone()
        };
        let cmdline = args
            .cmdline
            .clone()
            .or(file.boot_source.cmdline)
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_owned());
        let boot_source = BootSourceConfig::new(kernel, initrds, cmdline)?;
        let console = match args.console.as_deref().or(file.console.as_deref()) {
            Some(value) => ConsoleConfig::parse(value)?,
            None => ConsoleConfig::Stdout,
        };
        let drives = if args.disk.is_empty() {
            file.drives
        } else {
            args.disk
                .iter()
                .map(|value| DriveConfig::parse_flag(value))
                .collect::<Result<_, _>>()?
        };
        let nets = if args.net.is_empty() {
            file.network_interfaces
        } else {
            args.net
                .iter()
                .map(|value| NetConfig::parse_flag(value))
                .collect::<Result<_, _>>()?
        };
        let vsock = match &args.vsock {
            Some(value) => Some(VsockConfig::parse_flag(value)?),
            None => file.vsock,
        };
        let count = drives.len() + nets.len() + usize::from(vsock.is_some());
        if count > MAX_DEVICES {
            return Err(ConfigError::TooManyDevices { count });
        }
        let drives: Vec<DriveConfig> = drives
            .into_iter()
            .map(DriveConfig::new)
            .collect::<Result<_, _>>()?;
        let nets: Vec<NetConfig> = nets
            .into_iter()
            .map(NetConfig::new)
            .collect::<Result<_, _>>()?;
        if let Some(twice) = nets.iter().enumerate().find(|(i, net)| {
            nets[..*i]
                .iter()
                .any(|other| other.tap == net.tap && other.netns == net.netns)
        }) {
            return Err(ConfigError::Net {
                value: twice.1.tap.clone(),
                reason: "given twice".into(),
            });
        }
        let vsock = vsock.map(VsockConfig::new).transpose()?;
        let api_sock = args.api_sock.clone().or(file.api_sock);
        if let Some(path) = &api_sock {
            check_free_socket_path(path).map_err(|reason| ConfigError::ApiSock {
                path: path.clone(),
                reason,
            })?;
        }
        let jail = args.jail_settings(file.jail);
        let jail = jail
            .map(|jail| JailConfig::new(jail, &machine))
            .transpose()?;
        let config = Self {
            boot_source,
            machine,
            console,
            drives,
            nets,
            vsock,
            seccomp: !args.no_seccomp,
            api_sock,
            jail,
            boot_protocol: if args.no_pvh {
                BootProtocol::Linux64
            } else {
                BootProtocol::Auto
            },
        };
        let len = config.kernel_cmdline().len();
        if len > MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLongWithDevices { len });
        }
        Ok(config)
    }

    /// The virtio devices in slot order: the disks, the network interfaces, the socket
    /// device, then the entropy device.
    pub fn virtio_slots(&self) -> Vec<VirtioSlot> {
        (0..self.drives.len())
            .map(VirtioDeviceKind::Block)
            .chain((0..self.nets.len()).map(VirtioDeviceKind::Net))
            .chain(self.vsock.iter().map(|_| VirtioDeviceKind::Vsock))
            .chain([VirtioDeviceKind::Rng])
            .enumerate()
            .map(|(slot, kind)| {
                let (base, irq) = virtio_mmio_slot(slot);
                VirtioSlot { kind, base, irq }
            })
            .collect()
    }

    /// The command line the kernel gets: the configured one followed by one
    /// `virtio_mmio.device=4K@BASE:IRQ` per virtio device (for kernels built with
    /// VIRTIO_MMIO_CMDLINE_DEVICES).
    pub fn kernel_cmdline(&self) -> String {
        let mut cmdline = self.boot_source.cmdline.clone();
        for slot in self.virtio_slots() {
            cmdline.push_str(&format!(
                " virtio_mmio.device={}K@{:#x}:{}",
                MMIO_SLOT_LEN >> 10,
                slot.base,
                slot.irq
            ));
        }
        cmdline
    }
}

/// Why a socket path the VMM is to make cannot be used, if it cannot.
pub fn check_free_socket_path(path: &std::path::Path) -> Result<(), &'static str> {
    if path.as_os_str().is_empty() || path.as_os_str().len() > 107 {
        return Err("a socket path must have 1 to 107 bytes");
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        return Err("its directory does not exist");
    }
    if path.symlink_metadata().is_ok() {
        return Err("the path is busy: something exists there");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_file(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, b"not checked here").unwrap();
        path
    }

    fn args_with_kernel(kernel: PathBuf) -> VmmArgs {
        VmmArgs {
            kernel: Some(kernel),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let config =
            VmConfig::merge(&args_with_kernel(kernel.clone()), ConfigFile::default()).unwrap();
        assert_eq!(config.machine.cpus, 1);
        assert_eq!(config.machine.memory_mib, 128);
        assert_eq!(config.boot_source.cmdline, DEFAULT_CMDLINE);
        assert_eq!(config.boot_source.kernel, kernel);
        assert!(config.boot_source.initrds.is_empty());
        assert_eq!(config.console, ConsoleConfig::Stdout);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let a = dir.path().join("a.cpio");
        let b = dir.path().join("b.cpio");
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let file = ConfigFile::parse(&format!(
            r#"{{"boot-source": {{"kernel": "{}", "initrds": ["{}"], "cmdline": "from-file"}},
                "machine": {{"cpus": 4, "memory_mib": 512}}, "console": "stdout"}}"#,
            kernel.display(),
            a.display()
        ))
        .unwrap();
        let from_file = VmConfig::merge(&VmmArgs::default(), file.clone()).unwrap();
        assert_eq!(from_file.machine, MachineConfig::new(4, 512).unwrap());
        assert_eq!(from_file.boot_source.initrds, vec![a.clone()]);
        assert_eq!(from_file.boot_source.cmdline, "from-file");

        let console = dir.path().join("console.log");
        let args = VmmArgs {
            initrd: vec![b.clone(), a.clone()],
            cmdline: Some("from-flag".into()),
            cpus: Some(2),
            console: Some(console.display().to_string()),
            ..Default::default()
        };
        let merged = VmConfig::merge(&args, file).unwrap();
        assert_eq!(merged.machine.cpus, 2);
        assert_eq!(
            merged.machine.memory_mib, 512,
            "unset flags keep the file's value"
        );
        assert_eq!(merged.boot_source.initrds, vec![b, a]);
        assert_eq!(merged.boot_source.cmdline, "from-flag");
        assert_eq!(merged.console, ConsoleConfig::File(console));
    }

    #[test]
    fn errors_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let check = |args: VmmArgs, flag: &str| {
            let err = VmConfig::merge(&args, ConfigFile::default()).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with(flag), "{message:?} should name {flag}");
        };
        check(VmmArgs::default(), "--kernel");
        check(args_with_kernel(dir.path().join("missing")), "--kernel");
        check(args_with_kernel(dir.path().to_owned()), "--kernel");
        check(
            VmmArgs {
                initrd: vec![dir.path().join("missing.cpio")],
                ..args_with_kernel(kernel.clone())
            },
            "--initrd",
        );
        check(
            VmmArgs {
                cpus: Some(0),
                ..args_with_kernel(kernel.clone())
            },
            "--cpus",
        );
        check(
            VmmArgs {
                cpus: Some(MAX_VCPUS + 1),
                ..args_with_kernel(kernel.clone())
            },
            "--cpus",
        );
        check(
            VmmArgs {
                memory: Some(63),
                ..args_with_kernel(kernel.clone())
            },
            "--memory",
        );
        check(
            VmmArgs {
                cmdline: Some("x".repeat(MAX_CMDLINE_LEN + 1)),
                ..args_with_kernel(kernel.clone())
            },
            "--cmdline",
        );
        check(
            VmmArgs {
                cmdline: Some("a\0b".into()),
                ..args_with_kernel(kernel.clone())
            },
            "--cmdline",
        );
        check(
            VmmArgs {
                console: Some(dir.path().join("no/such/dir/log").display().to_string()),
                ..args_with_kernel(kernel.clone())
            },
            "--console",
        );
        check(
            VmmArgs {
                console: Some(dir.path().display().to_string()),
                ..args_with_kernel(kernel)
            },
            "--console",
        );
    }

    #[test]
    fn boundaries_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let announcement = " virtio_mmio.device=4K@0xd0000000:5";
        let longest = MAX_CMDLINE_LEN - announcement.len();
        let args = VmmArgs {
            cpus: Some(MAX_VCPUS),
            memory: Some(64),
            cmdline: Some("x".repeat(longest)),
            ..args_with_kernel(kernel)
        };
        let config = VmConfig::merge(&args, ConfigFile::default()).unwrap();
        assert_eq!(config.machine.memory_bytes(), 64 << 20);
        assert_eq!(
            config.kernel_cmdline(),
            format!("{}{announcement}", "x".repeat(longest))
        );
        let args = VmmArgs {
            cmdline: Some("x".repeat(longest + 1)),
            ..args
        };
        let err = VmConfig::merge(&args, ConfigFile::default()).unwrap_err();
        assert!(
            matches!(err, ConfigError::CmdlineTooLongWithDevices { len } if len == MAX_CMDLINE_LEN + 1),
            "{err}"
        );
        assert!(err.to_string().starts_with("--cmdline"));
    }

    #[test]
    fn disks_take_slots_before_the_entropy_device() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let a = dir.path().join("a.raw");
        let b = dir.path().join("b.raw");
        std::fs::write(&a, [0u8; 1024]).unwrap();
        std::fs::write(&b, [0u8; 512]).unwrap();
        let args = VmmArgs {
            disk: vec![a.display().to_string(), format!("{},ro", b.display())],
            ..args_with_kernel(kernel.clone())
        };
        let config = VmConfig::merge(&args, ConfigFile::default()).unwrap();
        assert_eq!(
            config.drives,
            vec![
                DriveConfig {
                    path: a.clone(),
                    read_only: false
                },
                DriveConfig {
                    path: b.clone(),
                    read_only: true
                }
            ]
        );
        let slots = config.virtio_slots();
        assert_eq!(
            slots,
            vec![
                VirtioSlot {
                    kind: VirtioDeviceKind::Block(0),
                    base: 0xd000_0000,
                    irq: 5
                },
                VirtioSlot {
                    kind: VirtioDeviceKind::Block(1),
                    base: 0xd000_1000,
                    irq: 6
                },
                VirtioSlot {
                    kind: VirtioDeviceKind::Rng,
                    base: 0xd000_2000,
                    irq: 7
                },
            ]
        );
        assert!(config.kernel_cmdline().ends_with(
            " virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7"
        ));

        let file = ConfigFile::parse(&format!(
            r#"{{"drives": [{{"path": "{}", "read_only": true}}]}}"#,
            a.display()
        ))
        .unwrap();
        let from_file = VmConfig::merge(&args_with_kernel(kernel), file).unwrap();
        assert_eq!(
            from_file.drives,
            vec![DriveConfig {
                path: a,
                read_only: true
            }]
        );
    }

    #[test]
    fn network_interfaces_sit_between_disks_and_the_entropy_device() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let disk = dir.path().join("a.raw");
        std::fs::write(&disk, [0u8; 512]).unwrap();
        let args = VmmArgs {
            disk: vec![disk.display().to_string()],
            net: vec!["tap0,mac=52:54:00:00:00:01".into()],
            ..args_with_kernel(kernel.clone())
        };
        let config = VmConfig::merge(&args, ConfigFile::default()).unwrap();
        let kinds: Vec<_> = config.virtio_slots().iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                VirtioDeviceKind::Block(0),
                VirtioDeviceKind::Net(0),
                VirtioDeviceKind::Rng
            ]
        );
        assert_eq!(config.nets[0].mac, [0x52, 0x54, 0, 0, 0, 1]);

        let file = ConfigFile::parse(
            r#"{"network-interfaces": [{"tap": "tap1"}, {"tap": "tap2", "mac": "02:00:00:00:00:02"}]}"#,
        )
        .unwrap();
        let from_file = VmConfig::merge(&args_with_kernel(kernel.clone()), file).unwrap();
        assert_eq!(from_file.nets.len(), 2);
        assert_eq!(from_file.nets[1].tap, "tap2");

        let twice = VmmArgs {
            net: vec!["tap0".into(), "tap0,mac=52:54:00:00:00:02".into()],
            ..args_with_kernel(kernel)
        };
        let err = VmConfig::merge(&twice, ConfigFile::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--net (network-interfaces) tap0: given twice"
        );
    }

    #[test]
    fn bad_disks_are_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let small = dir.path().join("small.raw");
        std::fs::write(&small, [0u8; 100]).unwrap();
        let good = dir.path().join("good.raw");
        std::fs::write(&good, [0u8; 512]).unwrap();
        let check = |disk: Vec<String>, expected: &str| {
            let args = VmmArgs {
                disk,
                ..args_with_kernel(kernel.clone())
            };
            let err = VmConfig::merge(&args, ConfigFile::default()).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("--disk"), "{message}");
            assert!(
                message.contains(expected),
                "{message:?} should say {expected:?}"
            );
        };
        check(
            vec![dir.path().join("absent").display().to_string()],
            "cannot be opened read-write",
        );
        check(
            vec![small.display().to_string()],
            "smaller than one 512-byte sector",
        );
        check(vec![dir.path().display().to_string()], "");
        check(
            vec![format!("{},rx", good.display())],
            "unknown option \"rx\"",
        );
        check(vec![",ro".into()], "expected PATH[,ro]");
        check(
            vec![good.display().to_string(); MAX_DEVICES + 1],
            "19 devices, at most 18 together",
        );
    }

    #[test]
    fn file_refuses_unknown_fields_and_reports_bad_files() {
        let err = ConfigFile::parse(r#"{"machine": {"cpu": 2}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `cpu`"), "{err}");
        assert!(ConfigFile::parse(r#"{"boot_source": {}}"#).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, "{").unwrap();
        let args = VmmArgs {
            config: Some(path),
            ..Default::default()
        };
        let err = VmConfig::from_args(&args).unwrap_err();
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{err}");
        assert!(err.to_string().starts_with("--config"));
        let args = VmmArgs {
            config: Some(dir.path().join("absent.json")),
            ..Default::default()
        };
        assert!(matches!(
            VmConfig::from_args(&args).unwrap_err(),
            ConfigError::Unreadable {
                flag: "--config",
                ..
            }
        ));
    }
}
