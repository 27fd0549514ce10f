//! Opening /dev/kvm and checking the capabilities the VMM relies on.

use kvm_ioctls::{Cap, Kvm};

/// The KVM device.
pub const KVM_PATH: &str = "/dev/kvm";

/// Capabilities the VMM needs, with the names the KVM API documentation uses.
pub const REQUIRED_CAPS: [(Cap, &str); 7] = [
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// /dev/kvm cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenKvmError {
    /// The device node does not exist.
    #[error("{KVM_PATH} is absent: this host has no KVM (load kvm_intel or kvm_amd)")]
    Absent,
    /// The caller may not open it.
    #[error("{KVM_PATH}: permission denied (read and write access is needed)")]
    Denied,
    /// Another open error.
    #[error("{KVM_PATH} cannot be opened")]
    Open(#[source] kvm_ioctls::Error),
    /// A capability the VMM needs is missing.
    #[error("{KVM_PATH} lacks {0}")]
    MissingCapability(&'static str),
}

/// Opens /dev/kvm and checks [`REQUIRED_CAPS`].
pub fn open_kvm() -> Result<Kvm, OpenKvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => OpenKvmError::Absent,
        libc::EACCES | libc::EPERM => OpenKvmError::Denied,
        _ => OpenKvmError::Open(e),
    })?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(OpenKvmError::MissingCapability(name));
        }
    }
    Ok(kvm)
}
