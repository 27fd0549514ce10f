//! The jail resource: the user the VMM drops to and its cgroup's limits (see `crate::jail`).

use serde::Deserialize;

use super::ConfigError;
use super::machine::MachineConfig;

/// The user and group a jailed VMM runs as once its devices are open: `nobody` and
/// `nogroup`, as Firecracker's jailer is usually run.
pub const DEFAULT_JAIL_ID: u32 = 65534;
/// Memory a jailed VMM may use beyond the guest's, by default: the VMM's own (a few MiB),
/// its threads' stacks and the page cache its disks fill.
pub const DEFAULT_JAIL_MEMORY_OVERHEAD_MIB: u64 = 128;
/// The least memory a jail allows beyond the guest's.
pub const MIN_JAIL_MEMORY_OVERHEAD_MIB: u64 = 16;

/// The `jail` section of the JSON configuration file; present means jailed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailFile {
    /// The user ID to run as.
    pub uid: Option<u32>,
    /// The group ID to run as.
    pub gid: Option<u32>,
    /// The cgroup's memory limit in MiB (guest memory included).
    pub memory_mib: Option<u64>,
    /// The cgroup's CPU limit in CPUs (1.5 is one and a half CPUs' time).
    pub cpus: Option<f64>,
}

/// A validated jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailConfig {
    /// The user ID the VMM runs as once its devices are open.
    pub uid: u32,
    /// The group ID the VMM runs as once its devices are open (its only group).
    pub gid: u32,
    /// The cgroup's memory limit in MiB, guest memory included.
    pub memory_mib: u64,
    /// The cgroup's CPU limit, in thousandths of a CPU.
    pub milli_cpus: u32,
}

impl JailConfig {
    /// Checks the limits against the machine: the memory limit must hold the guest's memory
    /// and [`MIN_JAIL_MEMORY_OVERHEAD_MIB`]; the CPU limit must be above zero. Unset limits
    /// default to the guest's memory plus [`DEFAULT_JAIL_MEMORY_OVERHEAD_MIB`] and one CPU
    /// per vCPU.
    pub fn new(jail: JailFile, machine: &MachineConfig) -> Result<Self, ConfigError> {
        let least = machine.memory_mib + MIN_JAIL_MEMORY_OVERHEAD_MIB;
        let memory_mib = jail
            .memory_mib
            .unwrap_or(machine.memory_mib + DEFAULT_JAIL_MEMORY_OVERHEAD_MIB);
        if memory_mib < least {
            return Err(ConfigError::Jail {
                flag: "--jail-memory (jail.memory_mib)",
                value: memory_mib.to_string(),
                reason: format!(
                    "the guest's {} MiB and {MIN_JAIL_MEMORY_OVERHEAD_MIB} MiB for the VMM need at least {least} MiB",
                    machine.memory_mib
                ),
            });
        }
        let cpus = jail.cpus.unwrap_or(f64::from(machine.cpus));
        // At least 1 ms of CPU time in each 100 ms period (the kernel's floor), at most as
        // many CPUs as a machine may have vCPUs.
        if !(cpus >= 0.01 && cpus <= f64::from(super::machine::MAX_VCPUS)) {
            return Err(ConfigError::Jail {
                flag: "--jail-cpus (jail.cpus)",
                value: cpus.to_string(),
                reason: format!("must be between 0.01 and {}", super::machine::MAX_VCPUS),
            });
        }
        Ok(Self {
            uid: jail.uid.unwrap_or(DEFAULT_JAIL_ID),
            gid: jail.gid.unwrap_or(DEFAULT_JAIL_ID),
            memory_mib,
            milli_cpus: (cpus * 1000.0).round() as u32,
        })
    }

    /// The memory limit in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// CPU time allowed per 100 ms period, in microseconds (cgroup `cpu.max`'s quota).
    pub fn cpu_quota_us(&self) -> u64 {
        u64::from(self.milli_cpus) * CPU_PERIOD_US / 1000
    }
}

/// The cgroup CPU period the jail's quota is given for, in microseconds (the kernel's
/// default).
pub const CPU_PERIOD_US: u64 = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineConfig {
        MachineConfig::new(2, 256).unwrap()
    }

    #[test]
    fn defaults_follow_the_machine() {
        let jail = JailConfig::new(JailFile::default(), &machine()).unwrap();
        assert_eq!(jail.uid, 65534);
        assert_eq!(jail.gid, 65534);
        assert_eq!(jail.memory_mib, 256 + 128);
        assert_eq!(jail.milli_cpus, 2000);
        assert_eq!(jail.cpu_quota_us(), 200_000);
        assert_eq!(jail.memory_bytes(), 384 << 20);
    }

    #[test]
    fn limits_that_cannot_hold_the_vm_are_refused() {
        let too_small = JailFile {
            memory_mib: Some(260),
            ..Default::default()
        };
        let err = JailConfig::new(too_small, &machine()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--jail-memory (jail.memory_mib) 260: the guest's 256 MiB and 16 MiB for the VMM need at least 272 MiB"
        );
        for cpus in [0.0, -1.0, f64::NAN, 1000.0] {
            let bad = JailFile {
                cpus: Some(cpus),
                ..Default::default()
            };
            let err = JailConfig::new(bad, &machine()).unwrap_err();
            assert!(
                err.to_string().starts_with("--jail-cpus (jail.cpus)"),
                "{err}"
            );
        }
        let half = JailFile {
            cpus: Some(0.5),
            uid: Some(1000),
            gid: Some(100),
            memory_mib: Some(272),
        };
        let jail = JailConfig::new(half, &machine()).unwrap();
        assert_eq!(jail.cpu_quota_us(), 50_000);
        assert_eq!((jail.uid, jail.gid, jail.memory_mib), (1000, 100, 272));
    }
}
