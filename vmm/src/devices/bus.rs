//! An address bus: which device answers which address range. The same structure serves the
//! port I/O space (ports 0-0xffff) and the MMIO space (guest physical addresses).

use std::sync::{Arc, Mutex, PoisonError};

/// A device on a bus. Offsets are relative to the device's base address or port.
pub trait BusDevice: Send {
    /// Fills `data` with what the guest reads at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Takes what the guest writes at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device range cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum AddBusDeviceError {
    /// The range overlaps another device's, is empty or is past the end of the space.
    #[error("{name} at {space} {base:#x}+{len:#x}: {reason}")]
    BadRange {
        /// The device.
        name: &'static str,
        /// `port` or `MMIO`.
        space: &'static str,
        /// Its base address.
        base: u64,
        /// Its length.
        len: u64,
        /// What is wrong.
        reason: String,
    },
}

struct BusEntry {
    name: &'static str,
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges and their devices; shared by all vCPU threads.
pub struct Bus {
    space: &'static str,
    /// One past the highest address of the space.
    end: u128,
    entries: Vec<BusEntry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| format!("{} {:#x}+{:#x}", e.name, e.base, e.len)),
            )
            .finish()
    }
}

impl Bus {
    /// An empty port I/O bus (ports 0 to 0xffff).
    pub fn port_io() -> Self {
        Self {
            space: "port",
            end: 0x1_0000,
            entries: Vec::new(),
        }
    }

    /// An empty MMIO bus (the whole guest physical address space).
    pub fn mmio() -> Self {
        Self {
            space: "MMIO",
            end: 1 << 64,
            entries: Vec::new(),
        }
    }

    /// Adds `device` at `base..base + len`.
    pub fn insert(
        &mut self,
        name: &'static str,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), AddBusDeviceError> {
        let bad = |reason: String| AddBusDeviceError::BadRange {
            name,
            space: self.space,
            base,
            len,
            reason,
        };
        let end = u128::from(base) + u128::from(len);
        if len == 0 || end > self.end {
            return Err(bad("empty or past the end of the space".into()));
        }
        if let Some(other) = self.entries.iter().find(|e| {
            u128::from(e.base) < end && u128::from(base) < u128::from(e.base) + u128::from(e.len)
        }) {
            return Err(bad(format!("overlaps {}", other.name)));
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(
            at,
            BusEntry {
                name,
                base,
                len,
                device,
            },
        );
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&BusEntry> {
        let at = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(at.checked_sub(1)?)?;
        (addr - entry.base < entry.len).then_some(entry)
    }

    /// A guest read at `addr`; returns false (and leaves `data` alone) if no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some(entry) = self.find(addr) else {
            return false;
        };
        let mut device = entry.device.lock().unwrap_or_else(PoisonError::into_inner);
        device.read(addr - entry.base, data);
        true
    }

    /// A guest write at `addr`; returns false if no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some(entry) = self.find(addr) else {
            return false;
        };
        let mut device = entry.device.lock().unwrap_or_else(PoisonError::into_inner);
        device.write(addr - entry.base, data);
        true
    }
}

/// The two buses a vCPU's exits are routed to.
#[derive(Debug)]
pub struct Buses {
    /// Port I/O (IN/OUT instructions).
    pub pio: Bus,
    /// Memory-mapped I/O (accesses to guest physical addresses without RAM).
    pub mmio: Bus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::port_io();
        bus.insert("b", 0x3f8, 8, b.clone()).unwrap();
        bus.insert("a", 0x60, 5, a.clone()).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x64, &mut data));
        assert_eq!(data, [4]);
        assert!(bus.write(0x3ff, &[7]));
        assert!(!bus.write(0x3f7, &[7]));
        assert!(!bus.write(0x400, &[7]));
        assert!(!bus.write(0x65, &[7]));
        let mut untouched = [0xaa];
        assert!(!bus.read(0x5f, &mut untouched));
        assert_eq!(untouched, [0xaa]);
        assert_eq!(b.lock().unwrap().writes, vec![(7, vec![7])]);
        assert!(a.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::port_io();
        bus.insert("serial", 0x3f8, 8, dev()).unwrap();
        let err = bus.insert("other", 0x3ff, 2, dev()).unwrap_err();
        assert!(err.to_string().contains("overlaps serial"), "{err}");
        assert!(bus.insert("other", 0x3f0, 9, dev()).is_err());
        assert!(bus.insert("below", 0x3f0, 8, dev()).is_ok());
        assert!(bus.insert("empty", 0x10, 0, dev()).is_err());
        assert!(bus.insert("wrap", 0xfff0, 0x20, dev()).is_err());
        assert!(bus.insert("last", 0xfff0, 0x10, dev()).is_ok());
    }

    #[test]
    fn mmio_reaches_the_top_of_the_address_space() {
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::mmio();
        bus.insert("virtio", 0xd000_0000, 0x1000, dev()).unwrap();
        bus.insert("top", u64::MAX - 0xfff, 0x1000, dev()).unwrap();
        let mut data = [0u8; 4];
        assert!(bus.read(0xd000_0070, &mut data));
        assert_eq!(data, [0x70; 4]);
        assert!(!bus.read(0xd000_1000, &mut data));
        assert!(bus.read(u64::MAX, &mut data));
        let err = bus.insert("past", u64::MAX, 2, dev()).unwrap_err();
        assert!(err.to_string().starts_with("past at MMIO"), "{err}");
    }
}
