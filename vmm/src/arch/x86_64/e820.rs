//! The e820 memory map the kernel reads from the zero page.

use super::layout::{EBDA_START, HIMEM_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The e820 map for guest RAM made of `ranges` (start, length), sorted, the first starting at
/// 0: low memory up to the EBDA, the legacy hole (EBDA, VGA, ROMs) reserved, then RAM from
/// 1 MiB on, and every further range as RAM.
pub fn e820_map(ranges: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(ranges.len() + 2);
    for &(start, len) in ranges {
        let end = start + len;
        if start == 0 {
            map.push(E820Entry {
                addr: 0,
                size: EBDA_START.min(end),
                kind: E820_RAM,
            });
            if end > HIMEM_START {
                map.push(E820Entry {
                    addr: EBDA_START,
                    size: HIMEM_START - EBDA_START,
                    kind: E820_RESERVED,
                });
                map.push(E820Entry {
                    addr: HIMEM_START,
                    size: end - HIMEM_START,
                    kind: E820_RAM,
                });
            }
        } else {
            map.push(E820Entry {
                addr: start,
                size: len,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{HIGH_RAM_START, MMIO32_START};

    #[test]
    fn low_memory_only() {
        let map = e820_map(&[(0, 128 << 20)]);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9_fc00,
                    size: 0x400 + 0x6_0000,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn memory_split_around_the_mmio_hole() {
        let high = 1 << 30;
        let map = e820_map(&[(0, MMIO32_START), (HIGH_RAM_START, high)]);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO32_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: HIGH_RAM_START,
                size: high,
                kind: E820_RAM
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, MMIO32_START + high - (HIMEM_START - EBDA_START));
    }
}
