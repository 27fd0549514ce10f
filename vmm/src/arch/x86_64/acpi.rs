//! ACPI tables for stock kernels (the acpi_tables crate): the RSDP at 0xe0000 (in the BIOS
//! area Linux scans, and in the zero page's `acpi_rsdp_addr`), an XSDT, a hardware-reduced
//! FADT whose sleep control register is the VMM's power-off port (0x600), a MADT with one
//! local APIC per vCPU and the IOAPIC, and a DSDT describing each virtio-mmio device
//! (`LNRO0005`, its registers and interrupt line) and `\_S5` (sleep type 5, which makes
//! Linux's power-off write 0x34 to the sleep control register). With them Debian's kernels,
//! which load virtio_mmio as a module, find the devices, bring up every vCPU and power off.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC_ADDR, IOAPIC_ID, LAPIC_ADDR};
use crate::devices::power::{SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};

/// Where the RSDP goes; the other tables follow it.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// The end of the area the tables may use (the BIOS area ends at 1 MiB).
const ACPI_END: u64 = 0x10_0000;
const OEM_ID: [u8; 6] = *b"BATON ";
const OEM_TABLE_ID: [u8; 8] = *b"BATONVMM";
const OEM_REVISION: u32 = 1;
/// The sleep type of S5 in `\_S5`, as the power-off port expects it.
const S5_SLEEP_TYPE: u8 = 5;

/// The tables cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteAcpiError {
    /// They do not fit below 1 MiB.
    #[error("the ACPI tables need {len} bytes from {RSDP_ADDR:#x}, more than fit below 1 MiB")]
    TooLarge {
        /// Bytes needed.
        len: u64,
    },
    /// Guest memory refused the write.
    #[error("cannot write the ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// A virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy)]
pub struct AcpiVirtioDevice {
    /// Its registers' address.
    pub base: u64,
    /// Its length.
    pub len: u64,
    /// Its interrupt line.
    pub irq: u32,
}

/// Writes the tables for `cpus` vCPUs and `devices`; returns the RSDP's address.
pub fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    cpus: u32,
    devices: &[AcpiVirtioDevice],
) -> Result<u64, WriteAcpiError> {
    let mut next = RSDP_ADDR + align(Rsdp::len() as u64);
    let mut place = |bytes: &[u8]| -> Result<u64, WriteAcpiError> {
        let at = next;
        next += align(bytes.len() as u64);
        if next > ACPI_END {
            return Err(WriteAcpiError::TooLarge {
                len: next - RSDP_ADDR,
            });
        }
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(WriteAcpiError::Write)?;
        Ok(at)
    };
    let dsdt = place(&dsdt(devices))?;
    let fadt = place(&fadt(dsdt))?;
    let madt = place(&madt(cpus))?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    let xsdt = place(&bytes(&xsdt))?;
    let rsdp = Rsdp::new(OEM_ID, xsdt);
    mem.write_slice(&bytes(&rsdp), GuestAddress(RSDP_ADDR))
        .map_err(WriteAcpiError::Write)?;
    Ok(RSDP_ADDR)
}

fn align(len: u64) -> u64 {
    len.next_multiple_of(64)
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The DSDT: `\_SB.Vnnn` for each virtio device, and `\_S5`.
fn dsdt(devices: &[AcpiVirtioDevice]) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let cca = aml::Name::new("_CCA".into(), &aml::ONE);
    let uids: Vec<aml::Name> = (0..devices.len())
        .map(|i| aml::Name::new("_UID".into(), &(i as u32)))
        .collect();
    let registers: Vec<aml::Memory32Fixed> = devices
        .iter()
        .map(|d| aml::Memory32Fixed::new(true, d.base as u32, d.len as u32))
        .collect();
    let lines: Vec<aml::Interrupt> = devices
        .iter()
        .map(|d| aml::Interrupt::new(true, true, false, false, d.irq))
        .collect();
    let templates: Vec<aml::ResourceTemplate> = registers
        .iter()
        .zip(&lines)
        .map(|(r, l)| aml::ResourceTemplate::new(vec![r, l]))
        .collect();
    let crs: Vec<aml::Name> = templates
        .iter()
        .map(|t| aml::Name::new("_CRS".into(), t))
        .collect();
    let names: Vec<String> = (0..devices.len()).map(|i| format!("V{i:03X}")).collect();
    let nodes: Vec<aml::Device> = (0..devices.len())
        .map(|i| {
            aml::Device::new(
                names[i].as_str().into(),
                vec![&hid, &cca, &uids[i], &crs[i]],
            )
        })
        .collect();
    let children: Vec<&dyn Aml> = nodes.iter().map(|d| d as &dyn Aml).collect();
    let system_bus = aml::Scope::new("\\_SB_".into(), children);
    let s5_type = S5_SLEEP_TYPE;
    let s5_package = aml::Package::new(vec![&s5_type, &s5_type]);
    let s5 = aml::Name::new("_S5_".into(), &s5_package);

    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    system_bus.to_aml_bytes(&mut body);
    s5.to_aml_bytes(&mut body);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

/// The FADT: hardware-reduced, sleep control and status on the power-off ports.
fn fadt(dsdt: u64) -> Vec<u8> {
    let port = |address: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(address),
        )
    };
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    builder.sleep_control_reg = port(SLEEP_CONTROL_PORT);
    builder.sleep_status_reg = port(SLEEP_STATUS_PORT);
    bytes(&builder.finalize())
}

/// The MADT: a local APIC per vCPU (APIC ID = index, as CPUID says) and the IOAPIC.
fn madt(cpus: u32) -> Vec<u8> {
    let mut table = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for index in 0..cpus {
        let id = index as u8;
        table.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    table.add_structure(IoApic::new(IOAPIC_ID, IOAPIC_ADDR, 0));
    bytes(&table)
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }
    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }
    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }
    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
    }
    /// A table at `addr`, checked for its signature and checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, 36);
        assert_eq!(&header[..4], signature);
        let bytes = read(mem, addr, u32_at(&header, 4) as usize);
        assert!(
            sums_to_zero(&bytes),
            "{} checksum",
            String::from_utf8_lossy(signature)
        );
        bytes
    }

    #[test]
    fn tables_describe_the_vcpus_devices_and_power_off() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let devices: Vec<AcpiVirtioDevice> = (0..3)
            .map(|i| AcpiVirtioDevice {
                base: 0xd000_0000 + i * 0x1000,
                len: 0x1000,
                irq: 5 + i as u32,
            })
            .collect();
        let rsdp_addr = write_acpi_tables(&mem, 2, &devices).unwrap();
        assert_eq!(rsdp_addr, 0xe_0000);

        let rsdp = read(&mem, rsdp_addr, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]), "ACPI 1.0 checksum");
        assert!(sums_to_zero(&rsdp), "extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2: the XSDT is used");
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16, "two entries");
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        let madt = table(&mem, u64_at(&xsdt, 44), b"APIC");

        assert_ne!(u32_at(&fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        // Sleep control and status registers: system I/O, 8 bits, ports 0x600 and 0x601.
        assert_eq!(fadt[244], 1);
        assert_eq!(fadt[245], 8);
        assert_eq!(u64_at(&fadt, 248), 0x600);
        assert_eq!(u64_at(&fadt, 260), 0x601);
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| w == &needle).count();
        assert_eq!(count(b"LNRO0005"), 3, "one virtio-mmio device each");
        assert_eq!(count(b"_S5_"), 1);
        assert_eq!(
            count(&0xd000_2000u32.to_le_bytes()),
            1,
            "the third device's registers"
        );

        assert_eq!(u32_at(&madt, 36), 0xfee0_0000, "local APIC address");
        let mut at = 44;
        let (mut lapics, mut ioapics) = (Vec::new(), Vec::new());
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            match kind {
                0 => lapics.push((madt[at + 2], madt[at + 3], u32_at(&madt, at + 4))),
                1 => ioapics.push(u32_at(&madt, at + 4)),
                _ => {}
            }
            at += len;
        }
        assert_eq!(
            lapics,
            [(0, 0, 1), (1, 1, 1)],
            "processor UID, APIC ID, enabled"
        );
        assert_eq!(ioapics, [0xfec0_0000]);
    }

    #[test]
    fn too_many_devices_do_not_fit() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let devices = vec![
            AcpiVirtioDevice {
                base: 0xd000_0000,
                len: 0x1000,
                irq: 5,
            };
            3000
        ];
        let err = write_acpi_tables(&mem, 1, &devices).unwrap_err();
        assert!(
            err.to_string().contains("more than fit below 1 MiB"),
            "{err}"
        );
    }
}
