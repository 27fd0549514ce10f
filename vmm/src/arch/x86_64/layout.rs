//! Where things live in guest physical memory at boot.

/// The boot GDT (four 8-byte descriptors).
pub const GDT_ADDR: u64 = 0x500;
/// The boot IDT (empty: the kernel installs its own before enabling interrupts).
pub const IDT_ADDR: u64 = 0x520;
/// The PVH start info (`struct hvm_start_info`), passed in `ebx` at the PVH entry.
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
/// The PVH module list (the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// The PVH memory map, up to the zero page.
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// The zero page (`struct boot_params`), passed in `rsi`.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer; the stack grows down below the page tables.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// The first of the four page directories of the boot identity map (2 MiB pages), one per
/// GiB: 0xb000 to 0xefff.
pub const PD_ADDR: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Start of the extended BIOS data area: usable low memory ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of high memory: kernels are loaded at or above this address.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (devices, the TSS KVM needs, later the IOAPIC and LAPIC
/// windows); guest RAM that does not fit below it continues at [`HIGH_RAM_START`].
pub const MMIO32_START: u64 = 0xc000_0000;
/// Where guest RAM above the 32-bit MMIO hole starts.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// Three pages KVM uses for the real-mode TSS on Intel hosts, inside the MMIO hole.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Highest address an initramfs may end at when the kernel does not say (boot protocol < 2.03).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Where the first virtio-mmio device's registers are; each device takes the next 4 KiB.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// The first virtio device's interrupt line; IRQs 0-4 are the legacy devices' (COM1 is 4).
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// The last interrupt line of the in-kernel IOAPIC.
pub const LAST_IOAPIC_IRQ: u32 = 23;
/// The local APIC's address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's in-kernel IOAPIC: its address and ID (distinct from every vCPU's local APIC ID).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// See [`IOAPIC_ADDR`].
pub const IOAPIC_ID: u8 = 0xfe;
/// The MP floating pointer (MultiProcessor Specification 1.4), at the start of the last KiB
/// of base memory where Linux looks for it; the MP configuration table follows it, inside
/// the reserved legacy hole.
pub const MP_TABLE_ADDR: u64 = EBDA_START;

/// The registers' address and the interrupt line of virtio device number `slot`.
pub fn virtio_mmio_slot(slot: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_START + slot as u64 * 0x1000,
        FIRST_VIRTIO_IRQ + slot as u32,
    )
}
