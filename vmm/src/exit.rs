//! How a VM ended, and the process exit code for each way.

use std::sync::mpsc::{SendError, Sender, SyncSender};

/// Exit code: the guest powered off.
pub const EXIT_POWEROFF: u8 = 0;
/// Exit code: the guest asked for a reset (reboot).
pub const EXIT_RESET: u8 = 3;
/// Exit code: a vCPU stopped on an error the guest cannot continue from.
pub const EXIT_VCPU_FAULT: u8 = 4;
/// Exit code: the VMM stopped the VM (the API's `shutdown`, once its timeout passed).
pub const EXIT_STOPPED: u8 = 5;

/// What asked for a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    /// Command 0xfe written to the i8042's command port (0x64): Linux's `reboot=k`.
    I8042,
    /// A triple fault (KVM_EXIT_SHUTDOWN): Linux's last-resort reboot, or a crashed guest.
    TripleFault,
    /// A KVM_SYSTEM_EVENT_RESET exit.
    SystemEvent,
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest wrote S5 to the sleep control register (port 0x600).
    PowerOff,
    /// The guest asked for a reset; the VMM ends instead of rebooting it.
    Reset(ResetCause),
    /// A vCPU stopped on an error: KVM internal error, failed entry, unexpected exit.
    VcpuFault {
        /// The vCPU's index.
        vcpu: u32,
        /// What happened.
        reason: String,
    },
    /// The API's `shutdown` stopped the VM: the guest did not end by itself in time.
    Stopped,
}

/// What the VMM's run loop waits for.
#[derive(Debug)]
pub enum VmEvent {
    /// The VM ends.
    Exit(VmExit),
    /// Pause the vCPUs (`pause`) or let them run again; `done` is answered once they are
    /// all parked (or released).
    Pause {
        /// Pause or resume.
        pause: bool,
        /// Answered when done.
        done: SyncSender<()>,
    },
}

impl VmExit {
    /// The process exit code for this way of ending (see vmm/README.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            VmExit::PowerOff => EXIT_POWEROFF,
            VmExit::Reset(_) => EXIT_RESET,
            VmExit::VcpuFault { .. } => EXIT_VCPU_FAULT,
            VmExit::Stopped => EXIT_STOPPED,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::Reset(ResetCause::I8042) => write!(f, "guest reset through the i8042"),
            VmExit::Reset(ResetCause::TripleFault) => write!(f, "guest triple-faulted (reset)"),
            VmExit::Reset(ResetCause::SystemEvent) => write!(f, "guest reset (system event)"),
            VmExit::VcpuFault { vcpu, reason } => write!(f, "vCPU {vcpu} stopped: {reason}"),
            VmExit::Stopped => write!(f, "stopped by the VMM's API (shutdown timed out)"),
        }
    }
}

/// A device's way to end the VM: sends one [`VmExit`] to the VMM's run loop.
#[derive(Debug, Clone)]
pub struct ExitTrigger {
    sender: Sender<VmEvent>,
    exit: VmExit,
}

impl ExitTrigger {
    /// A trigger that sends `exit` on `sender`.
    pub fn new(sender: Sender<VmEvent>, exit: VmExit) -> Self {
        Self { sender, exit }
    }
}

impl vm_superio::Trigger for ExitTrigger {
    type E = SendError<VmEvent>;

    fn trigger(&self) -> Result<(), Self::E> {
        self.sender.send(VmEvent::Exit(self.exit.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        assert_eq!(VmExit::PowerOff.exit_code(), 0);
        assert_eq!(VmExit::Reset(ResetCause::I8042).exit_code(), 3);
        assert_eq!(VmExit::Reset(ResetCause::TripleFault).exit_code(), 3);
        let fault = VmExit::VcpuFault {
            vcpu: 1,
            reason: "x".into(),
        };
        assert_eq!(fault.exit_code(), 4);
        assert_eq!(VmExit::Stopped.exit_code(), 5);
        assert_eq!(fault.to_string(), "vCPU 1 stopped: x");
    }
}
