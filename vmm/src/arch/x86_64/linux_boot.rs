//! The Linux direct boot: kernel, initramfs, command line, then either the zero page, GDT
//! and page tables of the 64-bit entry, or, when an ELF kernel offers it, the start info of
//! the PVH entry; the vCPU registers follow from [`BootEntry`].

use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot_params::{BootParamsInput, BuildBootParamsError, build_boot_params};
use super::e820::e820_map;
use super::gdt::{BOOT_GDT, PVH_GDT};
use super::initrd::{LoadInitrdError, load_initrds};
use super::kernel::{LoadKernelError, load_kernel};
use super::layout::{CMDLINE_ADDR, DEFAULT_INITRD_ADDR_MAX, GDT_ADDR, IDT_ADDR, ZERO_PAGE_ADDR};
use super::paging::identity_map_entries;
use super::pvh::{MemmapTooLarge, StartInfoInput, start_info_blobs};
use crate::config::BootSourceConfig;
use crate::memory::{low_ram_len, ram_ranges};

/// Boot protocol version from which the header has `initrd_addr_max`.
const PROTOCOL_INITRD_ADDR_MAX: u16 = 0x0203;
/// Boot protocol version from which the header has `cmdline_size`.
const PROTOCOL_CMDLINE_SIZE: u16 = 0x0206;

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// The 64-bit Linux boot protocol: long mode with paging.
    Linux64 {
        /// The kernel's 64-bit entry point (`rip`).
        entry: u64,
        /// The zero page (`rsi`).
        zero_page: u64,
    },
    /// The PVH entry: 32-bit protected mode, no paging.
    Pvh {
        /// The kernel's 32-bit PVH entry point (`eip`).
        entry: u64,
        /// The start info (`ebx`).
        start_info: u64,
    },
}

/// Which entry to boot an ELF kernel that offers both through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// PVH when the kernel offers it (as Firecracker does), else the 64-bit entry.
    #[default]
    Auto,
    /// Always the 64-bit Linux boot protocol.
    Linux64,
}

/// The guest cannot be prepared for booting Linux.
#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    /// The kernel cannot be loaded.
    #[error(transparent)]
    Kernel(#[from] LoadKernelError),
    /// The initramfs cannot be loaded.
    #[error(transparent)]
    Initrd(#[from] LoadInitrdError),
    /// The command line is longer than the kernel accepts.
    #[error("--cmdline: {len} bytes, this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Bytes given, with the NUL.
        len: usize,
        /// The kernel's `cmdline_size`.
        max: u32,
    },
    /// The PVH memory map does not fit.
    #[error(transparent)]
    PvhMemmap(#[from] MemmapTooLarge),
    /// The zero page cannot be built.
    #[error("cannot build the boot parameters")]
    BootParams(#[from] BuildBootParamsError),
    /// A boot structure cannot be written into guest memory.
    #[error("cannot write the {what} into guest memory")]
    Write {
        /// Which structure.
        what: &'static str,
        /// vm-memory's error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Loads everything `boot` names into `mem` and writes the boot structures.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    boot: &BootSourceConfig,
    acpi_rsdp: Option<u64>,
    protocol_choice: BootProtocol,
) -> Result<BootEntry, LinuxBootError> {
    let low_ram = low_ram_len(mem);
    let kernel = load_kernel(mem, &boot.kernel, low_ram)?;
    let header = kernel.setup_header;
    let protocol = header.map_or(0, |h| h.version);

    let initrd_limit = match header {
        Some(h) if protocol >= PROTOCOL_INITRD_ADDR_MAX && h.initrd_addr_max != 0 => {
            u64::from(h.initrd_addr_max) + 1
        }
        _ => DEFAULT_INITRD_ADDR_MAX + 1,
    }
    .min(low_ram);
    let initrd = load_initrds(mem, &boot.initrds, kernel.end, initrd_limit)?;

    let mut cmdline = boot.cmdline.clone().into_bytes();
    cmdline.push(0);
    if let Some(h) = header
        && protocol >= PROTOCOL_CMDLINE_SIZE
        && h.cmdline_size != 0
        && cmdline.len() > h.cmdline_size as usize + 1
    {
        return Err(LinuxBootError::CmdlineTooLong {
            len: cmdline.len(),
            max: h.cmdline_size,
        });
    }
    write(mem, "command line", &cmdline, CMDLINE_ADDR)?;

    let e820 = e820_map(&ram_ranges(mem));
    if let (Some(entry), BootProtocol::Auto) = (kernel.pvh_entry, protocol_choice) {
        let blobs = start_info_blobs(&StartInfoInput {
            cmdline_addr: CMDLINE_ADDR,
            initrd,
            acpi_rsdp,
            memmap: &e820,
        })?;
        for (addr, bytes) in &blobs {
            write(mem, "PVH start info", bytes, *addr)?;
        }
        write_gdt(mem, &PVH_GDT)?;
        tracing::debug!(entry, "booting through the kernel's PVH entry");
        return Ok(BootEntry::Pvh {
            entry,
            start_info: blobs[0].0,
        });
    }
    let params: boot_params = build_boot_params(&BootParamsInput {
        setup_header: header,
        cmdline_addr: CMDLINE_ADDR,
        cmdline_size: cmdline.len() as u32,
        initrd,
        e820: &e820,
        acpi_rsdp,
    })?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|source| LinuxBootError::Write {
            what: "zero page",
            source,
        })?;
    write_boot_tables(mem)?;
    Ok(BootEntry::Linux64 {
        entry: kernel.entry,
        zero_page: ZERO_PAGE_ADDR,
    })
}

/// Writes the boot GDT, an empty IDT and the identity page tables.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), LinuxBootError> {
    write_gdt(mem, &BOOT_GDT)?;
    for (addr, entry) in identity_map_entries() {
        write(mem, "page tables", &entry.to_le_bytes(), addr)?;
    }
    Ok(())
}

/// Writes `gdt` and an empty IDT.
fn write_gdt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<(), LinuxBootError> {
    for (i, entry) in gdt.iter().enumerate() {
        write(mem, "GDT", &entry.to_le_bytes(), GDT_ADDR + 8 * i as u64)?;
    }
    write(mem, "IDT", &0u64.to_le_bytes(), IDT_ADDR)
}

fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    bytes: &[u8],
    addr: u64,
) -> Result<(), LinuxBootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| LinuxBootError::Write { what, source })
}
