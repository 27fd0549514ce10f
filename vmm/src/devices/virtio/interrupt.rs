//! A virtio-mmio device's interrupt: the InterruptStatus bits and the line (an irqfd).

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit: the device used a buffer.
pub const INTERRUPT_USED_BUFFER: u32 = 1;
/// InterruptStatus bit: the configuration (or the device status) changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// The interrupt status register and the line that signals it.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    line: EventFd,
}

impl Interrupt {
    /// An interrupt raised by writing `line` (an eventfd registered as an irqfd).
    pub fn new(line: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// Sets `bits` in InterruptStatus and raises the line.
    pub fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(error) = self.line.write(1) {
            tracing::warn!(%error, "virtio interrupt not delivered");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The line, for tests that watch it.
    pub fn line(&self) -> &EventFd {
        &self.line
    }
}
