//! Emulated devices and the port I/O bus they sit on.

pub mod bus;
pub mod i8042;
pub mod power;
pub mod serial;

pub use bus::{AddPioDeviceError, PioBus, PioDevice};
