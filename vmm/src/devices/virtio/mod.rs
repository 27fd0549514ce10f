//! Virtio devices on the MMIO transport (virtio 1.2, "modern" only): the transport's register
//! file (`mmio.rs`), the interrupt it raises (`interrupt.rs`), the draining of a queue
//! (`queue.rs`), and one file per device type. Devices run their requests on the notification
//! thread (`notify_thread.rs`), which KVM wakes through an ioeventfd per queue when the driver
//! writes QueueNotify. Everything the guest controls (ring indices, descriptor
//! addresses and lengths, request headers) is checked; a queue the driver corrupts marks the
//! device as needing a reset (DEVICE_NEEDS_RESET), is logged, and never stops the VMM.

pub mod block;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod notify_thread;
pub mod queue;
pub mod rng;
pub mod vsock;

pub use interrupt::Interrupt;
pub use mmio::{MMIO_SLOT_LEN, MmioTransport};
pub use queue::BrokenQueue;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Feature bit every modern device offers and the driver must accept (VIRTIO_F_VERSION_1).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type IDs (virtio 1.2, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// A virtio device model, independent of its transport.
pub trait VirtioDevice: Send {
    /// The device type ID ([`device_type`]).
    fn device_type(&self) -> u32;
    /// The features offered to the driver, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// The maximum size of each of its queues; their number is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Fills `data` from the device configuration space at `offset`; bytes past its end
    /// read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Takes a driver write to the configuration space (ignored unless the device has
    /// writable fields).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(offset, len = data.len(), "write to read-only virtio config");
    }
    /// Handles the available chains of queue `index` (the driver notified it). Returns how
    /// many chains were used; an error means the queue is corrupt and the device is broken.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, BrokenQueue>;
    /// Forgets what the driver set up (the driver wrote 0 to Status).
    fn reset(&mut self) {}

    /// The device's counters, for the API's metrics.
    fn metrics(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Copies `offset..offset + data.len()` of `config` into `data`, zero past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(offset..) {
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_cases;
#[cfg(any(test, feature = "fuzzing"))]
pub mod test_driver;
