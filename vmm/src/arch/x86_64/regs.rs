//! Register state for the 64-bit Linux boot protocol (long mode, paging on, flat segments,
//! `rsi` = zero page, `rip` = the kernel's 64-bit entry) and for the PVH entry (32-bit
//! protected mode, paging off, flat segments, `ebx` = start info).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::gdt::{BOOT_GDT, CODE_INDEX, DATA_INDEX, PVH_GDT, TSS_INDEX, segment_from_entry};
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PML4_ADDR};

/// CR0: protected mode.
const CR0_PE: u64 = 1;
/// CR0: extension type (always 1 on modern CPUs).
const CR0_ET: u64 = 1 << 4;
/// CR0: paging.
const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS: the reserved bit 1, always set.
const RFLAGS_RESERVED: u64 = 1 << 1;
/// x87 control word after FNINIT.
const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR after reset: all exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;

/// General registers at the 64-bit entry.
pub fn boot_regs(entry: u64, zero_page: u64) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: zero_page,
        ..Default::default()
    }
}

/// Loads `gdt` (at [`GDT_ADDR`]), the empty IDT, and the flat segments of `gdt`'s code,
/// data and TSS descriptors into `sregs`.
fn load_flat_segments(sregs: &mut kvm_sregs, gdt: &[u64; 4]) {
    let segment = |index: u8| segment_from_entry(gdt[usize::from(index)], index);
    let data = segment(DATA_INDEX);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = segment(CODE_INDEX);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_INDEX);
}

/// Puts `sregs` (as read from the vCPU) in 64-bit mode on the boot GDT and identity map.
pub fn set_long_mode(sregs: &mut kvm_sregs) {
    load_flat_segments(sregs, &BOOT_GDT);
    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// General registers at the PVH entry (a stack too, though the protocol promises none:
/// Linux sets up its own before its first call).
pub fn pvh_regs(entry: u64, start_info: u64) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rbx: start_info,
        rsp: BOOT_STACK_POINTER,
        ..Default::default()
    }
}

/// Puts `sregs` (as read from the vCPU) in 32-bit protected mode without paging on the PVH
/// GDT, as the PVH entry asks.
pub fn set_protected_mode(sregs: &mut kvm_sregs) {
    load_flat_segments(sregs, &PVH_GDT);
    // Every bit but PE (and ET, fixed on modern CPUs) clear, as the PVH ABI asks.
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// FPU and SSE state at the entry.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_state() {
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        set_long_mode(&mut sregs);
        assert_eq!(sregs.cr0, 0xe000_0011, "PE and PG added, CD/NW/ET kept");
        assert_eq!(sregs.cr3, 0x9000);
        assert_eq!(sregs.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(sregs.efer, 0x500);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x500, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (0x520, 7));
        assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x08, 1, 0));
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!((seg.selector, seg.type_, seg.present), (0x10, 3, 1));
        }
        assert_eq!(sregs.tr.selector, 0x18);
    }

    #[test]
    fn pvh_state() {
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            cr4: CR4_PAE,
            efer: EFER_LME,
            ..Default::default()
        };
        set_protected_mode(&mut sregs);
        assert_eq!(
            sregs.cr0, 0x11,
            "PE and ET only: paging and caching bits clear"
        );
        assert_eq!((sregs.cr3, sregs.cr4, sregs.efer), (0, 0, 0));
        assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x08, 0, 1));
        assert_eq!((sregs.ds.selector, sregs.ss.db), (0x10, 1));
        let regs = pvh_regs(0x100_0040, 0x6000);
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0040, 0x6000, 2));
        assert_eq!(regs.rsp, 0x8ff0);
    }

    #[test]
    fn entry_registers() {
        let regs = boot_regs(0x100_0000, 0x7000);
        assert_eq!((regs.rip, regs.rsi, regs.rflags), (0x100_0000, 0x7000, 2));
        assert_eq!((regs.rsp, regs.rbp), (0x8ff0, 0x8ff0));
        assert_eq!(boot_fpu().fcw, 0x37f);
        assert_eq!(boot_fpu().mxcsr, 0x1f80);
    }
}
