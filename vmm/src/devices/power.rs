//! The power button the guest presses: the sleep control register of ACPI's hardware-reduced
//! model at port 0x600, and its sleep status register at 0x601 (reads 0). Writing SLP_EN
//! with SLP_TYP 5 (S5, soft off) ends the VM with [`VmExit::PowerOff`]. The FADT points Linux
//! at both (`arch/x86_64/acpi.rs`); guests that know the port use it directly.
//!
//! [`VmExit::PowerOff`]: crate::exit::VmExit::PowerOff

use vm_superio::Trigger;

use super::BusDevice;
use crate::exit::ExitTrigger;

/// The sleep control register's port.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The sleep status register's port.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// Ports it occupies: control and status.
pub const SLEEP_CONTROL_LEN: u16 = 2;
/// Sleep enable bit.
const SLP_EN: u8 = 1 << 5;
/// Sleep type S5 (soft off), in bits 2-4.
const SLP_TYP_S5: u8 = 5;
/// The value a guest writes to power off: SLP_EN | S5 << 2.
pub const POWEROFF_VALUE: u8 = SLP_EN | (SLP_TYP_S5 << 2);

/// The sleep control register on the port I/O bus.
#[derive(Debug)]
pub struct PowerControl {
    poweroff: ExitTrigger,
}

impl PowerControl {
    /// A register that fires `poweroff` on S5.
    pub fn new(poweroff: ExitTrigger) -> Self {
        Self { poweroff }
    }
}

impl BusDevice for PowerControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        if offset != 0 {
            // The sleep status register: the wake status a guest clears; nothing to do.
            return;
        }
        if value & SLP_EN != 0 && (value >> 2) & 0x7 == SLP_TYP_S5 {
            if self.poweroff.trigger().is_err() {
                tracing::warn!("poweroff request lost: the VMM is already stopping");
            }
        } else {
            tracing::debug!(value, "sleep control write ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{VmEvent, VmExit};

    #[test]
    fn only_s5_with_sleep_enable_powers_off() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut power = PowerControl::new(ExitTrigger::new(tx, VmExit::PowerOff));
        assert_eq!(POWEROFF_VALUE, 0x34);
        power.write(0, &[5 << 2]);
        power.write(0, &[SLP_EN | (3 << 2)]);
        assert!(rx.try_recv().is_err());
        power.write(1, &[POWEROFF_VALUE]);
        assert!(
            rx.try_recv().is_err(),
            "the status register does not power off"
        );
        power.write(0, &[POWEROFF_VALUE]);
        assert!(matches!(
            rx.try_recv().unwrap(),
            VmEvent::Exit(VmExit::PowerOff)
        ));
    }
}
