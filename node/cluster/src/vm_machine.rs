//! What a VM node is, whichever program runs it (QEMU for the `qemu` provider, `baton vmm`
//! for `microvm`): the image to boot, its console, NIC, data disk, memory and vCPUs.

use std::path::Path;

/// One node's machine.
#[derive(Clone, Debug)]
pub struct VmMachine<'a> {
    /// The image directory (its vmlinuz).
    pub image_dir: &'a Path,
    /// The node's initrd: the image's initramfs with its configuration appended (see
    /// [`crate::qemu_node::write_node_initrd`]).
    pub initrd: &'a Path,
    /// Where the serial console goes (appended to: it keeps every boot).
    pub console: &'a Path,
    /// The tap device on the cluster's bridge.
    pub tap: &'a str,
    /// The NIC's MAC address.
    pub mac: &'a str,
    /// The data disk image (the guest's /dev/vda).
    pub data_disk: &'a Path,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
}
