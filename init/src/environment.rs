//! Where init runs: on a machine of its own (a VM or bare metal), or as PID 1 of a namespace
//! sandbox on a host (the `process` provider), where what belongs to a real machine is skipped.

/// The environment variable a sandbox's creator sets for PID 1, as container managers do for
/// systemd (`container=<manager>`).
pub const SANDBOX_VARIABLE: &str = "container";

/// Where init runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    /// A machine of its own: modules, clock, disks and reboot(2) are init's to handle.
    Machine,
    /// A namespace sandbox on a host: the host's kernel, modules, clock and disks; powering off
    /// or rebooting ends init with an exit code (see [`crate::power`]).
    Sandbox,
}

impl Environment {
    /// Detects the environment from init's own environment variables.
    pub fn detect() -> Self {
        Self::from_variable(std::env::var_os(SANDBOX_VARIABLE).as_deref())
    }

    fn from_variable(value: Option<&std::ffi::OsStr>) -> Self {
        match value {
            Some(v) if !v.is_empty() => Environment::Sandbox,
            _ => Environment::Machine,
        }
    }

    /// Whether this is a namespace sandbox.
    pub fn is_sandbox(self) -> bool {
        self == Environment::Sandbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_variable_means_a_sandbox() {
        assert_eq!(Environment::from_variable(None), Environment::Machine);
        assert_eq!(
            Environment::from_variable(Some("".as_ref())),
            Environment::Machine
        );
        assert_eq!(
            Environment::from_variable(Some("baton".as_ref())),
            Environment::Sandbox
        );
    }
}
