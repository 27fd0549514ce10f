//! The KVM VM: guest memory slots, the TSS KVM needs, the in-kernel PIC/IOAPIC and PIT, and
//! interrupt lines as irqfds.

// KVM_SET_USER_MEMORY_REGION is unsafe: KVM maps host memory the VM does not own.
#![allow(unsafe_code)]

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::KVM_TSS_ADDR;

/// The VM cannot be created or set up.
#[derive(Debug, thiserror::Error)]
pub enum CreateVmError {
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM failed")]
    Create(#[source] kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR failed.
    #[error("KVM_SET_TSS_ADDR failed")]
    TssAddress(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("KVM_CREATE_IRQCHIP failed")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("KVM_CREATE_PIT2 failed")]
    Pit(#[source] kvm_ioctls::Error),
    /// A guest memory region has no host mapping.
    #[error("guest memory region {slot} at {start:#x} has no host mapping")]
    NoHostMapping {
        /// The slot.
        slot: u32,
        /// Its guest address.
        start: u64,
    },
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} at {start:#x} failed")]
    MemoryRegion {
        /// The slot.
        slot: u32,
        /// Its guest address.
        start: u64,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// An interrupt line cannot be connected.
#[derive(Debug, thiserror::Error)]
#[error("KVM_IRQFD for GSI {gsi} failed")]
pub struct RegisterIrqError {
    /// The GSI.
    pub gsi: u32,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// A KVM VM with its memory.
#[derive(Debug)]
pub struct Vm {
    // Declared before `memory` so that KVM lets go of the mappings before they are unmapped.
    fd: VmFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates the VM, its in-kernel interrupt controllers and PIT, and maps `memory` into it.
    pub fn new(kvm: &Kvm, memory: &GuestMemoryMmap) -> Result<Self, CreateVmError> {
        let fd = kvm.create_vm().map_err(CreateVmError::Create)?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(CreateVmError::TssAddress)?;
        fd.create_irq_chip().map_err(CreateVmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(CreateVmError::Pit)?;
        for (slot, region) in memory.iter().enumerate() {
            let slot = slot as u32;
            let start = region.start_addr().0;
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| CreateVmError::NoHostMapping { slot, start })?;
            let mapping = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: start,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: `host` is the start of a live mapping of `region.len()` bytes owned by
            // `memory`, a clone of which this Vm keeps until after the VM fd is closed, so KVM
            // never maps host memory that is gone or reused.
            unsafe { fd.set_user_memory_region(mapping) }.map_err(|source| {
                CreateVmError::MemoryRegion {
                    slot,
                    start,
                    source,
                }
            })?;
        }
        Ok(Self {
            fd,
            memory: memory.clone(),
        })
    }

    /// The KVM VM handle.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Makes KVM signal `evt` instead of exiting when the guest writes the 32-bit value `value`
    /// to the MMIO address `address`.
    pub fn register_mmio_notification(
        &self,
        evt: &EventFd,
        address: u64,
        value: u32,
    ) -> Result<(), kvm_ioctls::Error> {
        self.fd
            .register_ioevent(evt, &kvm_ioctls::IoEventAddress::Mmio(address), value)
    }

    /// Makes each write to `evt` raise interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), RegisterIrqError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| RegisterIrqError { gsi, source })
    }
}
