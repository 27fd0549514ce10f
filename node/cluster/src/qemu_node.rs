//! The `qemu` provider's nodes: the image booted by QEMU (direct kernel boot of its vmlinuz,
//! the initramfs with the node's configuration appended as an extra archive), with a virtio
//! NIC on a tap device plugged into the cluster's bridge. QEMU resets the guest itself when the
//! node reboots, and ends when it powers off. It uses KVM where KVM can boot Linux (`baton vmm
//! check`), and software emulation elsewhere.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use baton_image_builder::{INITRAMFS_NAME, KERNEL_NAME, write_config_archive};

/// The QEMU program.
pub const QEMU: &str = "qemu-system-x86_64";

/// The host-side tap device of node number `index` (at most 15 characters).
pub fn tap_name(index: usize) -> String {
    format!("tap-node{index}")
}

/// The MAC address of node number `index`'s NIC (QEMU's locally administered prefix).
pub fn mac_address(index: usize) -> String {
    format!(
        "52:54:00:ba:{:02x}:{:02x}",
        (index >> 8) & 0xff,
        index & 0xff
    )
}

/// Whether `program` is an executable file in one of $PATH's directories.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Why a node's boot files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum NodeInitrdError {
    /// Reading the image or writing the node's initrd failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration archive could not be written.
    #[error("writing the configuration archive")]
    Archive(#[from] baton_image_builder::InitramfsError),
}

/// Writes `node_dir/initrd.cpio.gz`: the image's initramfs followed by an archive of the
/// node's configuration `yaml` (the kernel unpacks both, in order). Returns its path.
pub fn write_node_initrd(
    image_dir: &Path,
    node_dir: &Path,
    yaml: &str,
) -> Result<PathBuf, NodeInitrdError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| NodeInitrdError::Io {
            action,
            path,
            source,
        }
    };
    let archive = node_dir.join("config.cpio.gz");
    write_config_archive(yaml, &archive, 0)?;
    let initramfs = image_dir.join(INITRAMFS_NAME);
    let mut initrd = std::fs::read(&initramfs).map_err(io("reading", &initramfs))?;
    initrd.extend(std::fs::read(&archive).map_err(io("reading", &archive))?);
    let _ = std::fs::remove_file(&archive);
    let path = node_dir.join("initrd.cpio.gz");
    std::fs::write(&path, initrd).map_err(io("writing", &path))?;
    Ok(path)
}

/// How one node's QEMU runs.
#[derive(Clone, Debug)]
pub struct QemuNode<'a> {
    /// The machine.
    pub machine: crate::vm_machine::VmMachine<'a>,
    /// Use KVM rather than software emulation.
    pub kvm: bool,
}

/// `path` as the value of a QEMU option: its commas doubled (a single one would end the value).
pub fn option_value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

impl QemuNode<'_> {
    /// QEMU's arguments. The console path is also how `destroy` recognises the process.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |arg: &str| args.push(arg.into());
        push("-M");
        push("pc");
        push("-accel");
        push(if self.kvm { "kvm" } else { "tcg" });
        push("-m");
        push(&self.machine.memory_mib.to_string());
        push("-smp");
        push(&self.machine.cpus.to_string());
        push("-display");
        push("none");
        push("-monitor");
        push("none");
        // Appended to: a node's console keeps every boot, across `cluster stop` and `start`.
        push("-chardev");
        push(&format!(
            "file,id=console,path={},append=on",
            option_value(self.machine.console)
        ));
        push("-serial");
        push("chardev:console");
        push("-kernel");
        push(
            &self
                .machine
                .image_dir
                .join(KERNEL_NAME)
                .display()
                .to_string(),
        );
        push("-initrd");
        push(&self.machine.initrd.display().to_string());
        push("-append");
        push("console=ttyS0 panic=-1");
        push("-netdev");
        push(&format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            self.machine.tap
        ));
        push("-device");
        push(&format!(
            "virtio-net-pci,netdev=net0,mac={}",
            self.machine.mac
        ));
        // The guest kernel credits what the host's generator gives (TCG has no RDRAND).
        push("-device");
        push("virtio-rng-pci");
        push("-drive");
        push(&format!(
            "file={},format=raw,if=virtio",
            option_value(self.machine.data_disk)
        ));
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_in_paths_are_doubled_for_qemu() {
        assert_eq!(option_value(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn each_node_gets_its_own_tap_and_mac() {
        assert_eq!(tap_name(12), "tap-node12");
        assert!(tap_name(199).len() <= 15);
        assert_eq!(mac_address(1), "52:54:00:ba:00:01");
        assert_eq!(mac_address(258), "52:54:00:ba:01:02");
        let node = QemuNode {
            machine: crate::vm_machine::VmMachine {
                image_dir: Path::new("/img"),
                initrd: Path::new("/n/initrd.cpio.gz"),
                console: Path::new("/n/console.log"),
                tap: "tap-node0",
                mac: "52:54:00:ba:00:00",
                data_disk: Path::new("/n/data.img"),
                memory_mib: 1024,
                cpus: 1,
            },
            kvm: false,
        };
        let args: Vec<String> = node
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(line.contains("-accel tcg -m 1024 -smp 1"), "{line}");
        assert!(
            line.contains("-kernel /img/vmlinuz -initrd /n/initrd.cpio.gz"),
            "{line}"
        );
        assert!(
            line.contains("-chardev file,id=console,path=/n/console.log,append=on"),
            "{line}"
        );
        assert!(
            line.contains("-drive file=/n/data.img,format=raw,if=virtio"),
            "{line}"
        );
        assert!(
            line.contains("tap,id=net0,ifname=tap-node0,script=no"),
            "{line}"
        );
    }
}
