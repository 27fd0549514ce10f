//! The unified kernel image (UKI) for UEFI: systemd's EFI stub (`linuxx64.efi.stub`, from
//! Debian's systemd-boot-efi package) with the kernel, the initramfs, the kernel command line
//! and an os-release added to it as PE sections (`.linux`, `.initrd`, `.cmdline`, `.osrel`), as
//! the Boot Loader Specification's type 2 entries are laid out. Firmware loads the whole file
//! and the stub boots the kernel from its own sections.
//!
//! Sections are appended by hand: a PE header has room left for a few more section headers
//! after the stub's own, and each new section's data goes at the end of the file, aligned.
//! Nothing in the output depends on the time or the host, so the same inputs give the same
//! bytes.

/// One section to add: its name (at most 8 bytes) and contents.
#[derive(Clone, Debug)]
pub struct UkiSection<'a> {
    /// The PE section name (`.linux`, `.initrd`, `.cmdline`, `.osrel`).
    pub name: &'static str,
    /// What it holds.
    pub data: &'a [u8],
}

/// Why the EFI stub could not be made into a unified kernel image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildUkiError {
    /// The stub is not a PE32+ image.
    #[error("the EFI stub is not a PE32+ image: {0}")]
    NotPe(&'static str),
    /// The stub's headers have no room for the new section headers.
    #[error(
        "the EFI stub's headers have room for {room} more section headers, and {wanted} are needed"
    )]
    NoRoom {
        /// How many fit.
        room: usize,
        /// How many were asked for.
        wanted: usize,
    },
    /// A section name is longer than PE allows.
    #[error("PE section name {0:?} is longer than 8 bytes")]
    LongName(&'static str),
    /// The image would not fit PE's 32-bit sizes.
    #[error("the unified kernel image would exceed 4 GiB")]
    TooLarge,
    /// The stub is signed: adding sections would break its signature (and the certificate
    /// table would have to move).
    #[error("the EFI stub carries a certificate table (it is signed); use an unsigned stub")]
    Signed,
}

const SECTION_HEADER_LEN: usize = 40;
/// Initialized data, readable: what every added section is.
const DATA_SECTION: u32 = 0x0000_0040 | 0x4000_0000;
/// Where added sections start in memory, at least: a page boundary.
const SECTION_VA_ALIGN: u64 = 4096;

fn u16_at(pe: &[u8], at: usize) -> Result<u16, BuildUkiError> {
    pe.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(BuildUkiError::NotPe("truncated headers"))
}

fn u32_at(pe: &[u8], at: usize) -> Result<u32, BuildUkiError> {
    pe.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BuildUkiError::NotPe("truncated headers"))
}

fn put_u16(pe: &mut [u8], at: usize, value: u16) {
    pe[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(pe: &mut [u8], at: usize, value: u32) {
    pe[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// The stub with `sections` added: a unified kernel image.
pub fn build_uki(stub: &[u8], sections: &[UkiSection<'_>]) -> Result<Vec<u8>, BuildUkiError> {
    if !stub.starts_with(b"MZ") {
        return Err(BuildUkiError::NotPe("no MZ signature"));
    }
    let pe_header = u32_at(stub, 0x3c)? as usize;
    if stub.get(pe_header..pe_header + 4) != Some(b"PE\0\0".as_slice()) {
        return Err(BuildUkiError::NotPe("no PE signature"));
    }
    let coff = pe_header + 4;
    let optional = coff + 20;
    if u16_at(stub, optional)? != 0x20b {
        return Err(BuildUkiError::NotPe("not PE32+"));
    }
    let section_count = u16_at(stub, coff + 2)? as usize;
    let optional_len = u16_at(stub, coff + 16)? as usize;
    let section_align = u64::from(u32_at(stub, optional + 32)?);
    let file_align = u64::from(u32_at(stub, optional + 36)?);
    let headers_len = u32_at(stub, optional + 60)? as usize;
    if section_align == 0 || file_align == 0 {
        return Err(BuildUkiError::NotPe("zero alignment"));
    }
    // Data directory 4, the certificate table (PE32+ data directories start at 112).
    if optional_len >= 112 + 5 * 8 && u32_at(stub, optional + 112 + 4 * 8 + 4)? != 0 {
        return Err(BuildUkiError::Signed);
    }
    let table = optional + optional_len;
    // The headers end where the first section's data begins, if that is sooner (and within
    // the file).
    let mut headers_end = headers_len.min(stub.len());
    let mut next_va = 0u64;
    for i in 0..section_count {
        let header = table + i * SECTION_HEADER_LEN;
        let virtual_size = u64::from(u32_at(stub, header + 8)?);
        let va = u64::from(u32_at(stub, header + 12)?);
        let raw_size = u64::from(u32_at(stub, header + 16)?);
        let raw_at = u32_at(stub, header + 20)? as usize;
        if raw_size > 0 {
            headers_end = headers_end.min(raw_at);
        }
        next_va = next_va.max(va + virtual_size.max(raw_size));
    }
    let first_free = table + section_count * SECTION_HEADER_LEN;
    let room = headers_end.saturating_sub(first_free) / SECTION_HEADER_LEN;
    if room < sections.len() {
        return Err(BuildUkiError::NoRoom {
            room,
            wanted: sections.len(),
        });
    }

    let mut image = stub.to_vec();
    let mut initialized = u64::from(u32_at(stub, optional + 8)?);
    let va_align = section_align.max(SECTION_VA_ALIGN);
    let mut va = align_up(next_va, va_align);
    let mut end = next_va;
    for (i, section) in sections.iter().enumerate() {
        if section.name.len() > 8 {
            return Err(BuildUkiError::LongName(section.name));
        }
        let raw_at = align_up(image.len() as u64, file_align);
        let raw_size = align_up(section.data.len() as u64, file_align);
        image.resize(raw_at as usize, 0);
        image.extend_from_slice(section.data);
        image.resize((raw_at + raw_size) as usize, 0);
        let fits = |v: u64| u32::try_from(v).map_err(|_| BuildUkiError::TooLarge);
        let header = first_free + i * SECTION_HEADER_LEN;
        let mut name = [0u8; 8];
        name[..section.name.len()].copy_from_slice(section.name.as_bytes());
        image[header..header + 8].copy_from_slice(&name);
        put_u32(&mut image, header + 8, fits(section.data.len() as u64)?);
        put_u32(&mut image, header + 12, fits(va)?);
        put_u32(&mut image, header + 16, fits(raw_size)?);
        put_u32(&mut image, header + 20, fits(raw_at)?);
        image[header + 24..header + 36].fill(0);
        put_u32(&mut image, header + 36, DATA_SECTION);
        initialized += raw_size;
        end = va + section.data.len() as u64;
        va = align_up(end, va_align);
    }
    let new_count =
        u16::try_from(section_count + sections.len()).map_err(|_| BuildUkiError::TooLarge)?;
    put_u16(&mut image, coff + 2, new_count);
    put_u32(
        &mut image,
        optional + 8,
        u32::try_from(initialized).map_err(|_| BuildUkiError::TooLarge)?,
    );
    put_u32(
        &mut image,
        optional + 56,
        u32::try_from(align_up(end, section_align)).map_err(|_| BuildUkiError::TooLarge)?,
    );
    let checksum = pe_checksum(&image, optional + 64);
    put_u32(&mut image, optional + 64, checksum);
    Ok(image)
}

/// The PE checksum: the 16-bit one's-complement-style sum of the file's words (the checksum
/// field itself counted as zero), plus the file's length.
fn pe_checksum(image: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, word) in image.chunks(2).enumerate() {
        let at = i * 2;
        if at >= checksum_at && at < checksum_at + 4 {
            continue;
        }
        let value = u64::from(word[0]) | word.get(1).map_or(0, |b| u64::from(*b) << 8);
        sum += value;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(image.len() as u32)
}

/// The sections of a UKI image, by name, with their data: read back for tests and tools.
pub fn uki_sections(image: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BuildUkiError> {
    let pe_header = u32_at(image, 0x3c)? as usize;
    let coff = pe_header + 4;
    let count = u16_at(image, coff + 2)? as usize;
    let table = coff + 20 + u16_at(image, coff + 16)? as usize;
    let mut sections = Vec::with_capacity(count);
    for i in 0..count {
        let header = table + i * SECTION_HEADER_LEN;
        let name = image
            .get(header..header + 8)
            .ok_or(BuildUkiError::NotPe("truncated section table"))?;
        let name = String::from_utf8_lossy(name)
            .trim_end_matches('\0')
            .to_string();
        let size = u32_at(image, header + 8)? as usize;
        let raw_size = u32_at(image, header + 16)? as usize;
        let raw_at = u32_at(image, header + 20)? as usize;
        let data = image
            .get(raw_at..raw_at + size.min(raw_size))
            .ok_or(BuildUkiError::NotPe(
                "section data past the end of the file",
            ))?;
        sections.push((name, data.to_vec()));
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image: DOS header, PE headers with room for 4 section headers, one
    /// `.text` section.
    fn tiny_pe() -> Vec<u8> {
        let mut pe = vec![0u8; 0x400];
        pe[..2].copy_from_slice(b"MZ");
        put_u32(&mut pe, 0x3c, 0x80);
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut pe, coff, 0x8664);
        put_u16(&mut pe, coff + 2, 1);
        put_u16(&mut pe, coff + 16, 240);
        let optional = coff + 20;
        put_u16(&mut pe, optional, 0x20b);
        put_u32(&mut pe, optional + 32, 0x200);
        put_u32(&mut pe, optional + 36, 0x200);
        put_u32(&mut pe, optional + 56, 0x1200);
        // Headers end where 5 section headers end.
        let table = optional + 240;
        put_u32(&mut pe, optional + 60, (table + 5 * 40) as u32);
        pe[table..table + 5].copy_from_slice(b".text");
        put_u32(&mut pe, table + 8, 0x10);
        put_u32(&mut pe, table + 12, 0x1000);
        put_u32(&mut pe, table + 16, 0x200);
        put_u32(&mut pe, table + 20, 0x400);
        pe.resize(0x600, 0xcc);
        pe
    }

    #[test]
    fn sections_are_added_after_the_stubs_own_and_read_back() {
        let stub = tiny_pe();
        let kernel = vec![7u8; 5000];
        let uki = build_uki(
            &stub,
            &[
                UkiSection {
                    name: ".cmdline",
                    data: b"console=ttyS0",
                },
                UkiSection {
                    name: ".linux",
                    data: &kernel,
                },
            ],
        )
        .unwrap();
        let sections = uki_sections(&uki).unwrap();
        let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [".text", ".cmdline", ".linux"]);
        assert_eq!(sections[1].1, b"console=ttyS0");
        assert_eq!(sections[2].1, kernel);
        // Sections do not overlap in memory, and the image's size covers the last one.
        let optional = 0x84 + 20;
        let table = optional + 240;
        let va = |i: usize| u32_at(&uki, table + i * 40 + 12).unwrap();
        assert_eq!(va(1), 0x2000);
        assert_eq!(va(2), 0x3000);
        assert_eq!(
            u32_at(&uki, optional + 56).unwrap(),
            0x3000 + 5000u32.div_ceil(0x200) * 0x200
        );
        // The checksum field holds the checksum of the whole image.
        assert_eq!(
            pe_checksum(&uki, optional + 64),
            u32_at(&uki, optional + 64).unwrap()
        );
        assert_ne!(u32_at(&uki, optional + 64).unwrap(), 0);
        // Same inputs, same bytes.
        let again = build_uki(
            &stub,
            &[
                UkiSection {
                    name: ".cmdline",
                    data: b"console=ttyS0",
                },
                UkiSection {
                    name: ".linux",
                    data: &kernel,
                },
            ],
        )
        .unwrap();
        assert_eq!(uki, again);
    }

    #[test]
    fn the_checksum_folds_carries_skips_its_own_field_and_adds_the_length() {
        // 0x0001 + 0xffff = 0x10000, folded to 0x0001; the field at 4..8 is skipped; plus 8.
        let image = [0x01, 0x00, 0xff, 0xff, 0xaa, 0xaa, 0xaa, 0xaa];
        assert_eq!(pe_checksum(&image, 4), 1 + 8);
        // An odd length: the last byte is the low half of a word.
        assert_eq!(pe_checksum(&[0x02, 0x00, 0x03], 8), 2 + 3 + 3);
    }

    #[test]
    fn a_signed_stub_is_refused() {
        let mut stub = tiny_pe();
        let optional = 0x84 + 20;
        put_u32(&mut stub, optional + 112 + 4 * 8, 0x600);
        put_u32(&mut stub, optional + 112 + 4 * 8 + 4, 0x100);
        assert_eq!(build_uki(&stub, &[]).unwrap_err(), BuildUkiError::Signed);
    }

    #[test]
    fn a_stub_without_room_or_a_non_pe_file_is_refused() {
        let stub = tiny_pe();
        let five: Vec<UkiSection> = (0..5)
            .map(|_| UkiSection {
                name: ".x",
                data: b"",
            })
            .collect();
        assert_eq!(
            build_uki(&stub, &five).unwrap_err(),
            BuildUkiError::NoRoom { room: 4, wanted: 5 }
        );
        assert_eq!(
            build_uki(b"not a PE file", &[]).unwrap_err(),
            BuildUkiError::NotPe("no MZ signature")
        );
        assert_eq!(
            build_uki(
                &stub,
                &[UkiSection {
                    name: ".toolongname",
                    data: b""
                }]
            )
            .unwrap_err(),
            BuildUkiError::LongName(".toolongname")
        );
    }
}
