//! The MP table (Intel MultiProcessor Specification 1.4) for kernels built without ACPI, as
//! the tailored node kernel may be: without it such a kernel sees only vCPU 0. A floating
//! pointer at [`MP_TABLE_ADDR`] (the last KiB of base memory, which Linux scans) points at a
//! configuration table right after it: one processor entry per vCPU (vCPU 0 the bootstrap
//! processor), the ISA bus, KVM's in-kernel IOAPIC, each of its 24 input lines wired to the
//! ISA interrupt of the same number (as KVM routes them, and as the ACPI tables say), and the
//! local APIC's LINT0 (ExtINT) and LINT1 (NMI). A kernel with ACPI prefers the MADT.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::acpi::RSDP_ADDR;
use super::layout::{IOAPIC_ADDR, IOAPIC_ID, LAPIC_ADDR, LAST_IOAPIC_IRQ, MP_TABLE_ADDR};

/// The floating pointer's length: one 16-byte paragraph.
const FLOATING_POINTER_LEN: usize = 16;
/// The configuration table header's length.
const HEADER_LEN: usize = 44;
/// The specification revision the structures follow (1.4).
const SPEC_REVISION: u8 = 4;

/// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Processor flags: enabled, bootstrap processor.
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// The local APIC version KVM's local APIC reports, and its IOAPIC's.
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// A processor of family 6, with an on-chip FPU (bit 0) and local APIC (bit 9).
const CPU_SIGNATURE: u32 = 6 << 8;
const CPU_FEATURES: u32 = 1 | (1 << 9);
/// Interrupt types: vectored (through the IOAPIC), NMI, external (the 8259's).
const INTERRUPT_INT: u8 = 0;
const INTERRUPT_NMI: u8 = 1;
const INTERRUPT_EXTINT: u8 = 3;
/// The one bus, and "all local APICs".
const ISA_BUS: u8 = 0;
const ALL_LAPICS: u8 = 0xff;
/// Local APIC IDs stop short of the IOAPIC's.
const MAX_CPUS: u32 = IOAPIC_ID as u32;

/// The MP table cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteMpTableError {
    /// More vCPUs than local APIC IDs below the IOAPIC's.
    #[error("an MP table describes at most {MAX_CPUS} vCPUs, not {0}")]
    TooManyCpus(u32),
    /// It would reach into the ACPI tables.
    #[error("the MP table for {cpus} vCPUs does not fit below the ACPI tables")]
    TooLarge {
        /// The vCPUs.
        cpus: u32,
    },
    /// Guest memory refused the write.
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Writes the floating pointer and configuration table for `cpus` vCPUs.
pub fn write_mp_table(mem: &GuestMemoryMmap, cpus: u32) -> Result<(), WriteMpTableError> {
    if cpus > MAX_CPUS {
        return Err(WriteMpTableError::TooManyCpus(cpus));
    }
    let table_addr = MP_TABLE_ADDR + FLOATING_POINTER_LEN as u64;
    let table = configuration_table(cpus);
    if table_addr + table.len() as u64 > RSDP_ADDR {
        return Err(WriteMpTableError::TooLarge { cpus });
    }
    let pointer = floating_pointer(table_addr as u32);
    mem.write_slice(&pointer, GuestAddress(MP_TABLE_ADDR))
        .and_then(|()| mem.write_slice(&table, GuestAddress(table_addr)))
        .map_err(WriteMpTableError::Write)
}

/// The floating pointer: signature, the table's address, its own length in paragraphs, the
/// revision, and a checksum; feature byte 1 is 0 (a configuration table is present).
fn floating_pointer(table_addr: u32) -> [u8; FLOATING_POINTER_LEN] {
    let mut bytes = [0u8; FLOATING_POINTER_LEN];
    bytes[0..4].copy_from_slice(b"_MP_");
    bytes[4..8].copy_from_slice(&table_addr.to_le_bytes());
    bytes[8] = 1;
    bytes[9] = SPEC_REVISION;
    bytes[10] = checksum(&bytes);
    bytes
}

/// The configuration table: header, then the entries in the order the specification asks
/// (processors, buses, IOAPICs, I/O interrupts, local interrupts).
fn configuration_table(cpus: u32) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut entry = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        let mut processor = [0u8; 20];
        processor[0] = ENTRY_PROCESSOR;
        processor[1] = id as u8;
        processor[2] = LAPIC_VERSION;
        processor[3] = flags;
        processor[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        processor[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        entry(&processor);
    }
    entry(&[ENTRY_BUS, ISA_BUS, b'I', b'S', b'A', b' ', b' ', b' ']);
    let mut ioapic = [ENTRY_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entry(&ioapic);
    for line in 0..=LAST_IOAPIC_IRQ as u8 {
        // Flags 0: polarity and trigger as the bus's (ISA: active high, edge).
        entry(&[
            ENTRY_IO_INTERRUPT,
            INTERRUPT_INT,
            0,
            0,
            ISA_BUS,
            line,
            IOAPIC_ID,
            line,
        ]);
    }
    entry(&[
        ENTRY_LOCAL_INTERRUPT,
        INTERRUPT_EXTINT,
        0,
        0,
        ISA_BUS,
        0,
        0,
        0,
    ]);
    entry(&[
        ENTRY_LOCAL_INTERRUPT,
        INTERRUPT_NMI,
        0,
        0,
        ISA_BUS,
        0,
        ALL_LAPICS,
        1,
    ]);

    let mut table = Vec::with_capacity(HEADER_LEN + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    table.push(SPEC_REVISION);
    table.push(0); // checksum, below
    table.extend_from_slice(b"BATON   ");
    table.extend_from_slice(b"BATONVMM    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // no extended table
    debug_assert_eq!(table.len(), HEADER_LEN);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The byte that makes `bytes` (with it at 0) sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, byte| sum.wrapping_add(*byte))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
    }

    /// Finds the table as Linux does: the floating pointer by its signature on a paragraph
    /// boundary of the last KiB of base memory, checked, then the table it points at.
    fn find_table(mem: &GuestMemoryMmap) -> Vec<u8> {
        let area = read(mem, 639 * 1024, 1024);
        let at = (0..area.len())
            .step_by(16)
            .find(|at| &area[*at..*at + 4] == b"_MP_")
            .expect("a floating pointer in the last KiB of base memory");
        let pointer = &area[at..at + 16];
        assert!(sums_to_zero(pointer), "floating pointer checksum");
        assert_eq!(pointer[8], 1, "one paragraph");
        assert_eq!(pointer[9], 4, "specification 1.4");
        assert_eq!(pointer[11], 0, "a configuration table, not a default one");
        let table_addr = u32::from_le_bytes(pointer[4..8].try_into().unwrap());
        let header = read(mem, u64::from(table_addr), 44);
        assert_eq!(&header[..4], b"PCMP");
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        let table = read(mem, u64::from(table_addr), len);
        assert!(sums_to_zero(&table), "configuration table checksum");
        table
    }

    /// The entries: (type, bytes).
    fn entries(table: &[u8]) -> Vec<&[u8]> {
        let count = u16::from_le_bytes([table[34], table[35]]) as usize;
        let mut at = 44;
        let mut found = Vec::new();
        while at < table.len() {
            let len = if table[at] == 0 { 20 } else { 8 };
            found.push(&table[at..at + len]);
            at += len;
        }
        assert_eq!(found.len(), count, "entry count");
        found
    }

    #[test]
    fn the_table_lists_every_vcpu_the_ioapic_and_its_lines() {
        let mem = memory();
        write_mp_table(&mem, 4).unwrap();
        let table = find_table(&mem);
        assert_eq!(
            u32::from_le_bytes(table[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let entries = entries(&table);
        let processors: Vec<(u8, u8)> = entries
            .iter()
            .filter(|e| e[0] == 0)
            .map(|e| (e[1], e[3]))
            .collect();
        assert_eq!(
            processors,
            [(0, 3), (1, 1), (2, 1), (3, 1)],
            "APIC IDs 0-3, all enabled, vCPU 0 the bootstrap processor"
        );
        let ioapics: Vec<&&[u8]> = entries.iter().filter(|e| e[0] == 2).collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(ioapics[0][1], 0xfe, "the IOAPIC ID the MADT gives");
        assert_eq!(
            u32::from_le_bytes(ioapics[0][4..8].try_into().unwrap()),
            0xfec0_0000
        );
        let lines: Vec<(u8, u8)> = entries
            .iter()
            .filter(|e| e[0] == 3)
            .map(|e| (e[5], e[7]))
            .collect();
        assert_eq!(lines, (0..24).map(|i| (i, i)).collect::<Vec<_>>());
        assert!(entries.iter().filter(|e| e[0] == 3).all(|e| e[6] == 0xfe));
        let local: Vec<(u8, u8, u8)> = entries
            .iter()
            .filter(|e| e[0] == 4)
            .map(|e| (e[1], e[6], e[7]))
            .collect();
        assert_eq!(
            local,
            [(3, 0, 0), (1, 0xff, 1)],
            "ExtINT on LINT0, NMI on LINT1"
        );
        // The order the specification asks: processors, bus, IOAPIC, interrupts.
        let kinds: Vec<u8> = entries.iter().map(|e| e[0]).collect();
        assert!(kinds.is_sorted());
    }

    #[test]
    fn the_most_vcpus_fit_below_the_acpi_tables_and_more_are_refused() {
        let mem = memory();
        write_mp_table(&mem, 254).unwrap();
        let table = find_table(&mem);
        assert_eq!(entries(&table).iter().filter(|e| e[0] == 0).count(), 254);
        assert!(MP_TABLE_ADDR + 16 + table.len() as u64 <= RSDP_ADDR);
        assert!(matches!(
            write_mp_table(&mem, 255),
            Err(WriteMpTableError::TooManyCpus(255))
        ));
    }
}
