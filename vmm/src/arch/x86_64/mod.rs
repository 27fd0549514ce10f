//! x86_64: the Linux 64-bit boot protocol, the vCPU state it needs, the ACPI tables and the MP
//! table.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod initrd;
pub mod kernel;
pub mod lapic;
pub mod layout;
pub mod linux_boot;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod pvh;
pub mod regs;
