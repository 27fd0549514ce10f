//! A vCPU and its boot-time state: CPUID, MSRs, local APIC, FPU, and for the boot vCPU the
//! 64-bit entry registers.

use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use super::vm::Vm;
use crate::arch::x86_64::cpuid::{CpuTopology, filter_cpuid};
use crate::arch::x86_64::lapic::set_lint;
use crate::arch::x86_64::linux_boot::BootEntry;
use crate::arch::x86_64::msr::boot_msr_entries;
use crate::arch::x86_64::regs::{boot_fpu, boot_regs, pvh_regs, set_long_mode, set_protected_mode};

/// A vCPU cannot be created or set up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureVcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("vCPU {index}: KVM_CREATE_VCPU failed")]
    Create {
        /// The vCPU.
        index: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A KVM_SET_* (or GET_*) ioctl failed.
    #[error("vCPU {index}: {ioctl} failed")]
    Ioctl {
        /// The vCPU.
        index: u32,
        /// The ioctl.
        ioctl: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Too many CPUID entries or MSRs for KVM's structures.
    #[error("vCPU {index}: too many {what} for KVM")]
    TooMany {
        /// The vCPU.
        index: u32,
        /// CPUID entries or MSRs.
        what: &'static str,
    },
    /// KVM took only some of the MSRs.
    #[error("vCPU {index}: KVM refused MSR {msr:#x}")]
    MsrRefused {
        /// The vCPU.
        index: u32,
        /// The first MSR not set.
        msr: u32,
    },
}

/// One vCPU of the VM.
#[derive(Debug)]
pub struct Vcpu {
    index: u32,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `index` (its APIC ID) in `vm`.
    pub fn new(vm: &Vm, index: u32) -> Result<Self, ConfigureVcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| ConfigureVcpuError::Create { index, source })?;
        Ok(Self { index, fd })
    }

    /// The vCPU's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The KVM vCPU handle.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The KVM vCPU handle, for running it.
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    fn ioctl_err(
        &self,
        ioctl: &'static str,
    ) -> impl FnOnce(kvm_ioctls::Error) -> ConfigureVcpuError {
        let index = self.index;
        move |source| ConfigureVcpuError::Ioctl {
            index,
            ioctl,
            source,
        }
    }

    /// Sets the state every vCPU starts with: CPUID from `supported` for a VM of `cpu_count`
    /// vCPUs, the boot MSRs, LINT0/LINT1, and the FPU.
    pub fn configure(&self, supported: &CpuId, cpu_count: u32) -> Result<(), ConfigureVcpuError> {
        let mut entries = supported.as_slice().to_vec();
        filter_cpuid(
            &mut entries,
            CpuTopology {
                cpu_index: self.index,
                cpu_count,
            },
        );
        let cpuid = CpuId::from_entries(&entries).map_err(|_| ConfigureVcpuError::TooMany {
            index: self.index,
            what: "CPUID entries",
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.ioctl_err("KVM_SET_CPUID2"))?;

        let msr_entries = boot_msr_entries();
        let msrs = Msrs::from_entries(&msr_entries).map_err(|_| ConfigureVcpuError::TooMany {
            index: self.index,
            what: "MSRs",
        })?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.ioctl_err("KVM_SET_MSRS"))?;
        if let Some(refused) = msr_entries.get(set) {
            return Err(ConfigureVcpuError::MsrRefused {
                index: self.index,
                msr: refused.index,
            });
        }

        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(self.ioctl_err("KVM_GET_LAPIC"))?;
        set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.ioctl_err("KVM_SET_LAPIC"))?;
        self.fd
            .set_fpu(&boot_fpu())
            .map_err(self.ioctl_err("KVM_SET_FPU"))?;
        Ok(())
    }

    /// Puts the vCPU at the kernel's 64-bit entry: long mode on the boot GDT and identity
    /// map, `rip` = entry, `rsi` = zero page.
    pub fn set_boot_entry(&self, boot: BootEntry) -> Result<(), ConfigureVcpuError> {
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(self.ioctl_err("KVM_GET_SREGS"))?;
        let regs = match boot {
            BootEntry::Linux64 { entry, zero_page } => {
                set_long_mode(&mut sregs);
                boot_regs(entry, zero_page)
            }
            BootEntry::Pvh { entry, start_info } => {
                set_protected_mode(&mut sregs);
                pvh_regs(entry, start_info)
            }
        };
        self.fd
            .set_sregs(&sregs)
            .map_err(self.ioctl_err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs)
            .map_err(self.ioctl_err("KVM_SET_REGS"))?;
        Ok(())
    }
}
