//! The zero page (`struct boot_params`) of the Linux x86 boot protocol.

use linux_loader::loader::bootparam::{E820_MAX_ENTRIES_ZEROPAGE, boot_params, setup_header};

use super::e820::E820Entry;

/// The boot flag the protocol requires in the setup header.
pub const BOOT_FLAG: u16 = 0xaa55;
/// "HdrS", the setup header's magic.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot loader type "undefined" (no assigned ID).
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Physical alignment the kernel is told to assume when its header says nothing.
pub const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// The zero page cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildBootParamsError {
    /// More memory ranges than the zero page holds.
    #[error("{entries} e820 entries, the zero page holds {E820_MAX_ENTRIES_ZEROPAGE}")]
    TooManyE820Entries {
        /// Entries that were asked for.
        entries: usize,
    },
    /// An address does not fit the 32-bit header field it goes into.
    #[error("{field} address {addr:#x} is above 4 GiB")]
    AddressAbove4G {
        /// The header field.
        field: &'static str,
        /// The address.
        addr: u64,
    },
}

/// What the zero page describes.
#[derive(Debug, Clone)]
pub struct BootParamsInput<'a> {
    /// The bzImage's own setup header, copied as the protocol asks; `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// Address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Length of the command line including its NUL.
    pub cmdline_size: u32,
    /// Initramfs address and length, if any.
    pub initrd: Option<(u64, u64)>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// Where the ACPI RSDP is, if the VM has ACPI tables.
    pub acpi_rsdp: Option<u64>,
}

/// Builds the zero page.
pub fn build_boot_params(input: &BootParamsInput<'_>) -> Result<boot_params, BuildBootParamsError> {
    let mut params = boot_params::default();
    if let Some(header) = input.setup_header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    params.hdr.cmd_line_ptr = low32("cmd_line_ptr", input.cmdline_addr)?;
    params.hdr.cmdline_size = input.cmdline_size;
    if let Some((addr, size)) = input.initrd {
        params.hdr.ramdisk_image = low32("ramdisk_image", addr)?;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if input.e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BuildBootParamsError::TooManyE820Entries {
            entries: input.e820.len(),
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(input.e820) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind;
    }
    params.e820_entries = input.e820.len() as u8;
    params.acpi_rsdp_addr = input.acpi_rsdp.unwrap_or(0);
    Ok(params)
}

fn low32(field: &'static str, addr: u64) -> Result<u32, BuildBootParamsError> {
    u32::try_from(addr).map_err(|_| BuildBootParamsError::AddressAbove4G { field, addr })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::e820::e820_map;
    use vm_memory::ByteValued;

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn fields_land_at_the_protocol_offsets() {
        let e820 = e820_map(&[(0, 256 << 20)]);
        let params = build_boot_params(&BootParamsInput {
            setup_header: None,
            cmdline_addr: 0x2_0000,
            cmdline_size: 31,
            initrd: Some((0x0f00_0000, 0x12_3456)),
            acpi_rsdp: None,
            e820: &e820,
        })
        .unwrap();
        let bytes = params.as_slice();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(bytes[0x1e8], 3, "e820_entries");
        assert_eq!(bytes[0x210], 0xff, "type_of_loader");
        assert_eq!(u16::from_le_bytes([bytes[0x1fe], bytes[0x1ff]]), 0xaa55);
        assert_eq!(u32_at(bytes, 0x202), HDRS_MAGIC);
        assert_eq!(u32_at(bytes, 0x218), 0x0f00_0000, "ramdisk_image");
        assert_eq!(u32_at(bytes, 0x21c), 0x12_3456, "ramdisk_size");
        assert_eq!(u32_at(bytes, 0x228), 0x2_0000, "cmd_line_ptr");
        assert_eq!(u32_at(bytes, 0x230), DEFAULT_KERNEL_ALIGNMENT);
        assert_eq!(u32_at(bytes, 0x238), 31, "cmdline_size");
        // e820_table at 0x2d0, 20 bytes per entry.
        for (i, entry) in e820.iter().enumerate() {
            let at = 0x2d0 + 20 * i;
            assert_eq!(u64_at(bytes, at), entry.addr);
            assert_eq!(u64_at(bytes, at + 8), entry.size);
            assert_eq!(u32_at(bytes, at + 16), entry.kind);
        }
        assert_eq!(u64_at(bytes, 0x2d0 + 20 * 3), 0, "no fourth entry");
    }

    #[test]
    fn bzimage_header_is_kept_and_completed() {
        let header = setup_header {
            setup_sects: 0x1b,
            version: 0x020f,
            loadflags: 0x01,
            kernel_alignment: 0x20_0000,
            init_size: 0x123_4000,
            ..Default::default()
        };
        let params = build_boot_params(&BootParamsInput {
            setup_header: Some(header),
            cmdline_addr: 0x2_0000,
            cmdline_size: 1,
            initrd: None,
            acpi_rsdp: None,
            e820: &[],
        })
        .unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.setup_sects }, 0x1b);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.loadflags }, 0x01);
        assert_eq!(
            { hdr.kernel_alignment },
            0x20_0000,
            "the kernel's own alignment"
        );
        assert_eq!({ hdr.init_size }, 0x123_4000);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.ramdisk_image }, 0);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let many = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            E820_MAX_ENTRIES_ZEROPAGE + 1
        ];
        let input = BootParamsInput {
            setup_header: None,
            cmdline_addr: 0x2_0000,
            cmdline_size: 1,
            initrd: None,
            acpi_rsdp: None,
            e820: &many,
        };
        assert!(matches!(
            build_boot_params(&input),
            Err(BuildBootParamsError::TooManyE820Entries { entries: 129 })
        ));
        let input = BootParamsInput {
            initrd: Some((1 << 32, 4096)),
            acpi_rsdp: None,
            e820: &[],
            ..input
        };
        assert!(matches!(
            build_boot_params(&input),
            Err(BuildBootParamsError::AddressAbove4G {
                field: "ramdisk_image",
                ..
            })
        ));
    }
}
