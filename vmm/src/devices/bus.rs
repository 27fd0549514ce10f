//! The port I/O bus: which device answers which port range.

use std::sync::{Arc, Mutex, PoisonError};

/// A device reached through port I/O. Offsets are relative to the device's base port.
pub trait PioDevice: Send {
    /// Fills `data` with what the guest reads at `offset`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Takes what the guest writes at `offset`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A device range cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum AddPioDeviceError {
    /// The range overlaps another device's, or is empty or past port 0xffff.
    #[error("{name} at ports {base:#x}+{len}: {reason}")]
    BadRange {
        /// The device.
        name: &'static str,
        /// Its base port.
        base: u16,
        /// Its number of ports.
        len: u16,
        /// What is wrong.
        reason: String,
    },
}

struct BusEntry {
    name: &'static str,
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PioDevice>>,
}

/// Port ranges and their devices; shared by all vCPU threads.
#[derive(Default)]
pub struct PioBus {
    entries: Vec<BusEntry>,
}

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| format!("{} {:#x}+{}", e.name, e.base, e.len)),
            )
            .finish()
    }
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at ports `base..base + len`.
    pub fn insert(
        &mut self,
        name: &'static str,
        base: u16,
        len: u16,
        device: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), AddPioDeviceError> {
        let bad = |reason: String| AddPioDeviceError::BadRange {
            name,
            base,
            len,
            reason,
        };
        let end = u32::from(base) + u32::from(len);
        if len == 0 || end > 0x1_0000 {
            return Err(bad("empty or past port 0xffff".into()));
        }
        if let Some(other) = self.entries.iter().find(|e| {
            u32::from(e.base) < end && u32::from(base) < u32::from(e.base) + u32::from(e.len)
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

    fn find(&self, port: u16) -> Option<&BusEntry> {
        let at = self.entries.partition_point(|e| e.base <= port);
        let entry = self.entries.get(at.checked_sub(1)?)?;
        (u32::from(port) < u32::from(entry.base) + u32::from(entry.len)).then_some(entry)
    }

    /// A guest read of `port`; returns false (and leaves `data` alone) if no device is there.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        let Some(entry) = self.find(port) else {
            return false;
        };
        let mut device = entry.device.lock().unwrap_or_else(PoisonError::into_inner);
        device.read(port - entry.base, data);
        true
    }

    /// A guest write to `port`; returns false if no device is there.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        let Some(entry) = self.find(port) else {
            return false;
        };
        let mut device = entry.device.lock().unwrap_or_else(PoisonError::into_inner);
        device.write(port - entry.base, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u16, Vec<u8>)>,
    }

    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::new();
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
        let mut bus = PioBus::new();
        bus.insert("serial", 0x3f8, 8, dev()).unwrap();
        let err = bus.insert("other", 0x3ff, 2, dev()).unwrap_err();
        assert!(err.to_string().contains("overlaps serial"), "{err}");
        assert!(bus.insert("other", 0x3f0, 9, dev()).is_err());
        assert!(bus.insert("below", 0x3f0, 8, dev()).is_ok());
        assert!(bus.insert("empty", 0x10, 0, dev()).is_err());
        assert!(bus.insert("wrap", 0xfff0, 0x20, dev()).is_err());
        assert!(bus.insert("last", 0xfff0, 0x10, dev()).is_ok());
    }
}
