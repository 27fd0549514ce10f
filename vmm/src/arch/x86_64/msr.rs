//! Model-specific registers set before the first entry.

use kvm_bindings::kvm_msr_entry;

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// STAR (SYSCALL target segments).
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR (64-bit SYSCALL target).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR (compatibility-mode SYSCALL target).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL flag mask.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE (SWAPGS).
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE: fast string operations enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled, default type write-back (6).
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// The MSRs every vCPU starts with: the SYSCALL/SYSENTER targets cleared, the TSC at 0, fast
/// strings on, and all memory write-back through the MTRR default type.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_write_back_and_fast_strings() {
        let entries = boot_msr_entries();
        let value = |index| entries.iter().find(|e| e.index == index).map(|e| e.data);
        assert_eq!(value(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(value(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(value(MSR_LSTAR), Some(0));
        assert_eq!(entries.len(), 11);
        let mut indices: Vec<_> = entries.iter().map(|e| e.index).collect();
        indices.dedup();
        assert_eq!(indices.len(), 11, "no MSR twice");
    }
}
