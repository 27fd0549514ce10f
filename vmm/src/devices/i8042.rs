//! The i8042 keyboard controller at ports 0x60-0x64, as far as a kernel needs it: reads
//! return 0 (no data, input buffer empty, so the kernel sees no keyboard), and command 0xfe
//! on port 0x64 pulses the CPU reset line, which ends the VM with [`VmExit::Reset`].
//! Port 0x61 (system control port B) is emulated by KVM's in-kernel PIT (speaker dummy).
//!
//! [`VmExit::Reset`]: crate::exit::VmExit::Reset

use vm_superio::I8042Device;

use super::BusDevice;
use crate::exit::ExitTrigger;

/// Base port of the i8042 (data port).
pub const I8042_PORT: u16 = 0x60;
/// Ports from the data port to the command port (0x64).
pub const I8042_PORT_LEN: u16 = 5;

/// The i8042 on the port I/O bus.
pub struct I8042 {
    device: I8042Device<ExitTrigger>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// An i8042 whose reset command fires `reset`.
    pub fn new(reset: ExitTrigger) -> Self {
        Self {
            device: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.device.read(offset as u8);
        data.fill(0);
        if let Some(byte) = data.first_mut() {
            *byte = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        if let Err(error) = self.device.write(offset as u8, value) {
            tracing::warn!(
                ?error,
                "i8042 reset request lost: the VMM is already stopping"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{ResetCause, VmEvent, VmExit};

    #[test]
    fn reset_command_ends_the_vm() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut i8042 = I8042::new(ExitTrigger::new(tx, VmExit::Reset(ResetCause::I8042)));
        i8042.write(0, &[0xfe]);
        i8042.write(4, &[0xff]);
        assert!(rx.try_recv().is_err(), "other writes do nothing");
        let mut status = [0xaau8];
        i8042.read(4, &mut status);
        assert_eq!(status, [0], "status: nothing to read, ready for input");
        i8042.write(4, &[0xfe]);
        assert!(matches!(
            rx.try_recv().unwrap(),
            VmEvent::Exit(VmExit::Reset(ResetCause::I8042))
        ));
    }
}
