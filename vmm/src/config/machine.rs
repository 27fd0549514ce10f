//! The machine resource: vCPU count and guest memory size.

use serde::Deserialize;

use super::ConfigError;

/// Fewest MiB of guest memory a VM may have.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Most MiB of guest memory a VM may have (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most vCPUs a VM may have: xAPIC IDs are 8 bits and 0xff is the broadcast ID.
pub const MAX_VCPUS: u32 = 254;
/// vCPUs when neither `--cpus` nor the file says.
pub const DEFAULT_VCPUS: u32 = 1;
/// Guest memory in MiB when neither `--memory` nor the file says.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// The `machine` section of the JSON configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineFile {
    /// Number of vCPUs.
    pub cpus: Option<u32>,
    /// Guest memory in MiB.
    pub memory_mib: Option<u64>,
    /// Back guest memory with 2 MiB huge pages (`--hugepages`).
    pub hugepages: Option<bool>,
}

/// Validated machine shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineConfig {
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    pub cpus: u32,
    /// Guest memory in MiB, [`MIN_MEMORY_MIB`]..=[`MAX_MEMORY_MIB`].
    pub memory_mib: u64,
    /// Whether guest memory is backed by 2 MiB huge pages (hugetlb).
    pub hugepages: bool,
}

impl MachineConfig {
    /// Checks the vCPU count and memory size.
    pub fn new(cpus: u32, memory_mib: u64) -> Result<Self, ConfigError> {
        if !(1..=MAX_VCPUS).contains(&cpus) {
            return Err(ConfigError::Cpus { cpus });
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(ConfigError::Memory { memory_mib });
        }
        Ok(Self {
            cpus,
            memory_mib,
            hugepages: false,
        })
    }

    /// The same machine with its memory on 2 MiB huge pages: the size must be a whole
    /// number of them.
    pub fn with_hugepages(self) -> Result<Self, ConfigError> {
        if !self.memory_mib.is_multiple_of(2) {
            return Err(ConfigError::HugepagesSize {
                memory_mib: self.memory_mib,
            });
        }
        Ok(Self {
            hugepages: true,
            ..self
        })
    }

    /// Guest memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}
