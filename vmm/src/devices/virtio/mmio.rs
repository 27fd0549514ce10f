//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the register file a
//! driver uses to discover a device, negotiate features, set up its queues and notify them.
//! Registers below the configuration space take aligned 32-bit accesses only; anything else
//! is logged and ignored (reads give 0).

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::interrupt::{INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_BUFFER, Interrupt};
use super::{BrokenQueue, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::devices::BusDevice;

/// Bytes of MMIO each device occupies (registers and configuration space).
pub const MMIO_SLOT_LEN: u64 = 0x1000;
/// "virt" in little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version: 2, virtio 1.0 and later.
pub const MMIO_VERSION: u32 = 2;
/// "BATN" in little-endian: the vendor ID the device reports.
pub const VENDOR_ID: u32 = 0x4e54_4142;

/// Register offsets.
pub mod reg {
    #![allow(missing_docs)]
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    #![allow(missing_docs)]
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// One virtio device behind its MMIO registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    name: String,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    /// Why the device stopped using its queues, until the driver resets it.
    broken: Option<String>,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("name", &self.name)
            .field("status", &self.status)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// `device` reached through registers, using `mem` and raising `interrupt`; `name` is
    /// for logs.
    pub fn new(
        name: String,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("queue sizes are powers of two up to 32768"))
            .collect();
        Self {
            device,
            name,
            mem,
            interrupt,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            broken: None,
        }
    }

    /// The device status the driver has set (and DEVICE_NEEDS_RESET when broken).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The device's counters, and whether it needs a reset.
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        let mut metrics = self.device.metrics();
        metrics.push(("needs_reset", u64::from(self.broken.is_some())));
        metrics
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only before the queue is enabled and the driver is done.
    fn queue_setup_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn read_register(&self, offset: u64) -> u32 {
        let features_half = |features: u64, sel: u32| match sel {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => features_half(self.device.features(), self.device_features_sel),
            reg::QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(device = %self.name, offset, "read of a write-only or unknown virtio register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    tracing::warn!(device = %self.name, "driver features written after FEATURES_OK");
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            reg::STATUS => self.write_status(value),
            _ => {
                tracing::debug!(device = %self.name, offset, value, "write to a read-only or unknown virtio register");
            }
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_setup_allowed() {
            tracing::warn!(device = %self.name, offset, "queue register written outside queue setup");
            return;
        }
        let name = self.name.clone();
        let Some(queue) = self.selected_queue() else {
            tracing::warn!(device = %name, offset, "queue register of a queue that does not exist");
            return;
        };
        if offset != reg::QUEUE_READY && queue.ready() {
            tracing::warn!(device = %name, offset, "queue register written while the queue is enabled");
            return;
        }
        match offset {
            reg::QUEUE_NUM => {
                if let Err(error) = queue.try_set_size(value as u16) {
                    tracing::warn!(device = %name, value, ?error, "queue size refused");
                }
            }
            reg::QUEUE_READY => queue.set_ready(value == 1),
            reg::QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            reg::QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            reg::QUEUE_DRIVER_LOW => queue.set_avail_ring_address(Some(value), None),
            reg::QUEUE_DRIVER_HIGH => queue.set_avail_ring_address(None, Some(value)),
            reg::QUEUE_DEVICE_LOW => queue.set_used_ring_address(Some(value), None),
            reg::QUEUE_DEVICE_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => unreachable!("only queue registers are routed here"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.status & !status::DEVICE_NEEDS_RESET;
        let value = value & !status::DEVICE_NEEDS_RESET;
        let added = value & !current;
        if value & current != current {
            tracing::warn!(device = %self.name, from = self.status, to = value, "driver cleared status bits without a reset");
            return;
        }
        let mut value = value;
        if added & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            let accepted = self.driver_features;
            if accepted & !offered != 0 || accepted & VIRTIO_F_VERSION_1 == 0 {
                tracing::warn!(device = %self.name, offered, accepted, "driver features refused");
                value &= !status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0
            && let Some(index) = self
                .queues
                .iter()
                .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            self.set_broken(format!(
                "queue {index} is enabled with addresses outside guest memory or misaligned"
            ));
        }
        self.status = value | (self.status & status::DEVICE_NEEDS_RESET);
    }

    fn reset(&mut self) {
        tracing::debug!(device = %self.name, "driver reset");
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.broken = None;
        self.interrupt.clear();
    }

    fn set_broken(&mut self, reason: String) {
        tracing::warn!(device = %self.name, %reason, "virtio device needs a reset");
        self.broken = Some(reason);
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.raise(INTERRUPT_CONFIG_CHANGE);
    }

    /// Runs queue `index`, for a QueueNotify write of `index` (a vCPU's, or one KVM caught
    /// through an ioeventfd and handed to the notification thread).
    pub(crate) fn notify(&mut self, index: u32) {
        let index = index as usize;
        if self.queues.get(index).is_none() {
            tracing::warn!(device = %self.name, index, "notify of a queue that does not exist");
            return;
        }
        if !self.queue_usable(index) {
            tracing::debug!(device = %self.name, index, "notify ignored: queue not set up or device broken");
            return;
        }
        let result = self
            .device
            .process_queue(index, &mut self.queues[index], &self.mem);
        self.finish_use(index, result);
    }

    /// Whether the driver has set queue `index` up and the device may use it.
    fn queue_usable(&self, index: usize) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.broken.is_none()
            && self.queues.get(index).is_some_and(|q| q.ready())
    }

    /// Raises the used-buffer interrupt if chains were used and the driver wants it, or
    /// marks the device broken.
    fn finish_use(&mut self, index: usize, result: Result<usize, BrokenQueue>) -> Option<usize> {
        match result {
            Ok(0) => Some(0),
            Ok(used) => match self.queues[index].needs_notification(&self.mem) {
                Ok(false) => Some(used),
                Ok(true) => {
                    self.interrupt.raise(INTERRUPT_USED_BUFFER);
                    Some(used)
                }
                Err(error) => {
                    self.set_broken(format!("queue {index}: {error}"));
                    None
                }
            },
            Err(error) => {
                self.set_broken(format!("queue {index}: {error}"));
                None
            }
        }
    }

    /// Lets a device thread use queue `index` outside a notification (a received frame):
    /// runs `work` on it if the driver has set it up, then interrupts as a notification
    /// does. Returns the chains used, or None if the queue is not usable (or broke).
    pub fn use_queue(
        &mut self,
        index: usize,
        work: impl FnOnce(&mut Queue, &GuestMemoryMmap) -> Result<usize, BrokenQueue>,
    ) -> Option<usize> {
        if !self.queue_usable(index) {
            return None;
        }
        let result = work(&mut self.queues[index], &self.mem);
        self.finish_use(index, result)
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::warn!(device = %self.name, offset, len = data.len(), "unaligned or non-32-bit virtio register read");
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(device = %self.name, offset, len = data.len(), "non-32-bit virtio register write ignored");
            return;
        };
        if !offset.is_multiple_of(4) {
            tracing::warn!(device = %self.name, offset, "unaligned virtio register write ignored");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::test_driver::{
        AVAIL_RING, BUFFERS, DESC_TABLE, TestDriver, USED_RING,
    };

    #[test]
    fn identifies_itself_as_a_modern_virtio_mmio_device() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        assert_eq!(driver.read32(reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(driver.read32(reg::VERSION), 2);
        assert_eq!(driver.read32(reg::DEVICE_ID), 4);
        assert_eq!(driver.read32(reg::VENDOR_ID), VENDOR_ID);
        assert_eq!(driver.device_features(), VIRTIO_F_VERSION_1);
        driver.write32(reg::QUEUE_SEL, 0);
        assert_eq!(driver.read32(reg::QUEUE_NUM_MAX), 256);
        driver.write32(reg::QUEUE_SEL, 1);
        assert_eq!(driver.read32(reg::QUEUE_NUM_MAX), 0, "no second queue");
        let mut narrow = [0xffu8; 2];
        driver.read_bytes(reg::MAGIC_VALUE, &mut narrow);
        assert_eq!(narrow, [0, 0], "16-bit register reads give 0");
    }

    #[test]
    fn refuses_features_it_did_not_offer_or_a_legacy_driver() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        let status = driver.negotiate(VIRTIO_F_VERSION_1 | 1 << 28);
        assert_eq!(status & status::FEATURES_OK, 0);
        let status = driver.negotiate(0);
        assert_eq!(status & status::FEATURES_OK, 0, "VERSION_1 is required");
        let status = driver.negotiate(VIRTIO_F_VERSION_1);
        assert_ne!(status & status::FEATURES_OK, 0);
    }

    #[test]
    fn queue_registers_are_frozen_once_the_queue_is_enabled() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        driver.write32(reg::QUEUE_NUM, 16);
        assert!(
            !driver.transport.lock().unwrap().queues[0].ready(),
            "before FEATURES_OK"
        );
        assert_eq!(driver.transport.lock().unwrap().queues[0].size(), 256);
        let features = driver.device_features();
        driver.negotiate(features);
        driver.setup_queue(16, DESC_TABLE, AVAIL_RING, USED_RING);
        assert_eq!(driver.transport.lock().unwrap().queues[0].size(), 16);
        // Enabled, before DRIVER_OK: the queue's own registers are frozen.
        driver.write32(reg::QUEUE_DESC_LOW, 0x8000);
        driver.write32(reg::QUEUE_NUM, 8);
        let desc = driver.transport.lock().unwrap().queues[0].desc_table();
        assert_eq!(desc, DESC_TABLE);
        assert_eq!(driver.transport.lock().unwrap().queues[0].size(), 16);
        assert_eq!(driver.read32(reg::QUEUE_READY), 1);
        // After DRIVER_OK, every queue register is.
        driver.write32(reg::STATUS, 0xf);
        driver.write32(reg::QUEUE_READY, 0);
        assert_eq!(driver.read32(reg::QUEUE_READY), 1);
    }

    #[test]
    fn used_buffers_raise_the_interrupt_until_acknowledged() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        driver.start(16);
        driver.submit(&[(BUFFERS, 64, true)]);
        assert_eq!(driver.used(), (1, vec![(0, 64)]));
        assert_eq!(driver.interrupt.line().read().unwrap(), 1);
        assert_eq!(driver.read32(reg::INTERRUPT_STATUS), 1);
        driver.write32(reg::INTERRUPT_ACK, 1);
        assert_eq!(driver.read32(reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn a_corrupt_available_index_breaks_the_device_until_reset() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        driver.start(16);
        driver.write_desc(0, BUFFERS, 8, 2, 0);
        driver.set_avail_idx(100);
        driver.write32(reg::QUEUE_NOTIFY, 0);
        assert_eq!(driver.used().0, 0, "nothing used from a corrupt ring");
        let status = driver.read32(reg::STATUS);
        assert_ne!(status & status::DEVICE_NEEDS_RESET, 0, "{status:#x}");
        assert_ne!(driver.read32(reg::INTERRUPT_STATUS) & 2, 0, "config change");
        driver.set_avail_idx(0);
        driver.write32(reg::QUEUE_NOTIFY, 0);
        assert_eq!(driver.used().0, 0, "ignored while broken");

        driver.start(16);
        assert_eq!(driver.read32(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        driver.submit(&[(BUFFERS, 8, true)]);
        assert_eq!(
            driver.used(),
            (1, vec![(0, 8)]),
            "works again after a reset"
        );
    }

    #[test]
    fn rings_outside_memory_break_the_device_at_driver_ok() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        let features = driver.device_features();
        driver.negotiate(features);
        driver.setup_queue(16, 0xfff_0000, AVAIL_RING, USED_RING);
        driver.write32(reg::STATUS, 0xf);
        assert_ne!(driver.read32(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        driver.write32(reg::QUEUE_NOTIFY, 0);
    }

    #[test]
    fn notify_of_a_missing_queue_or_before_driver_ok_is_ignored() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        driver.write32(reg::QUEUE_NOTIFY, 0);
        driver.start(16);
        driver.write32(reg::QUEUE_NOTIFY, 7);
        assert_eq!(driver.read32(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }
}
