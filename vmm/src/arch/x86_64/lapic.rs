//! Local APIC setup: LINT0 takes the 8259's ExtINT, LINT1 takes NMIs, as a PC's BIOS leaves
//! them (the kernel's virtual-wire mode expects this).

use kvm_bindings::kvm_lapic_state;

/// Offset of the LVT LINT0 register in the APIC page.
const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the APIC page.
const APIC_LVT1: usize = 0x360;
/// Delivery mode ExtINT.
const DELIVERY_EXTINT: u32 = 0x7;
/// Delivery mode NMI.
const DELIVERY_NMI: u32 = 0x4;

fn read_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in `lapic` (as read from the vCPU).
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = read_reg(lapic, APIC_LVT0);
    write_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, DELIVERY_EXTINT));
    let lvt1 = read_reg(lapic, APIC_LVT1);
    write_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, DELIVERY_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut lapic = kvm_lapic_state { regs: [0; 1024] };
        // Masked LVT entries as after reset, with a vector in the low byte of LINT1.
        write_reg(&mut lapic, APIC_LVT0, 0x0001_0000);
        write_reg(&mut lapic, APIC_LVT1, 0x0001_0002);
        set_lint(&mut lapic);
        assert_eq!(read_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(read_reg(&lapic, APIC_LVT1), 0x0001_0402);
        assert_eq!(lapic.regs[0x340], 0, "neighbours untouched");
        assert_eq!(lapic.regs[0x370], 0);
    }
}
