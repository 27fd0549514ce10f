//! Emulated devices and the buses they sit on: the legacy devices on port I/O, virtio
//! devices on MMIO.

pub mod bus;
pub mod console_socket;
pub mod i8042;
pub mod power;
pub mod serial;
pub mod virtio;

pub use bus::{AddBusDeviceError, Bus, BusDevice, Buses};
