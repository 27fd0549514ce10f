//! A virtio driver on the host side, for device tests: it goes through the MMIO registers as
//! a guest driver does and lays its split queue out in a guest memory of its own. Built for
//! the unit tests and, with the `fuzzing` feature, for the `cargo fuzz` targets.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{reg, status};
use super::{Interrupt, MmioTransport, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::devices::BusDevice;

/// Where the driver puts queue 0's rings; queue `q`'s are `q * QUEUE_STRIDE` further.
pub const DESC_TABLE: u64 = 0x1000;
pub const AVAIL_RING: u64 = 0x3000;
pub const USED_RING: u64 = 0x4000;
pub const QUEUE_STRIDE: u64 = 0x4000;
/// Where tests put their buffers.
pub const BUFFERS: u64 = 0x10000;
/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

#[allow(missing_debug_implementations)] // Its transport holds a device trait object.
pub struct TestDriver {
    pub transport: Arc<Mutex<MmioTransport>>,
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<Interrupt>,
    queue_size: u16,
    avail_idx: Vec<u16>,
}

impl TestDriver {
    /// `device` behind a transport over 1 MiB of memory.
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            "test".into(),
            device,
            mem.clone(),
            interrupt.clone(),
        )));
        Self {
            transport,
            mem,
            interrupt,
            queue_size: 0,
            avail_idx: vec![0; 8],
        }
    }

    pub fn read32(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.read_bytes(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// A read of any width at `offset` (registers or configuration space).
    pub fn read_bytes(&self, offset: u64, data: &mut [u8]) {
        self.transport.lock().unwrap().read(offset, data);
    }

    pub fn write32(&mut self, offset: u64, value: u32) {
        self.transport
            .lock()
            .unwrap()
            .write(offset, &value.to_le_bytes());
    }

    /// The device features (both halves).
    pub fn device_features(&mut self) -> u64 {
        self.write32(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.read32(reg::DEVICE_FEATURES);
        self.write32(reg::DEVICE_FEATURES_SEL, 1);
        u64::from(low) | (u64::from(self.read32(reg::DEVICE_FEATURES)) << 32)
    }

    /// Acknowledges the device and accepts `features`; returns the status read back.
    pub fn negotiate(&mut self, features: u64) -> u32 {
        self.write32(reg::STATUS, 0);
        self.write32(reg::STATUS, status::ACKNOWLEDGE);
        self.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.write32(reg::DRIVER_FEATURES, features as u32);
        self.write32(reg::DRIVER_FEATURES_SEL, 1);
        self.write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.write32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.read32(reg::STATUS)
    }

    /// Negotiates the device's features, sets up each of its queues with `size` entries
    /// and sets DRIVER_OK.
    pub fn start(&mut self, size: u16) {
        let features = self.device_features();
        assert_ne!(features & VIRTIO_F_VERSION_1, 0);
        let status = self.negotiate(features);
        assert_ne!(status & status::FEATURES_OK, 0, "features accepted");
        self.avail_idx = vec![0; 8];
        for q in 0..8u32 {
            self.write32(reg::QUEUE_SEL, q);
            if self.read32(reg::QUEUE_NUM_MAX) == 0 {
                break;
            }
            let stride = u64::from(q) * QUEUE_STRIDE;
            self.setup_queue_at(
                q,
                size,
                DESC_TABLE + stride,
                AVAIL_RING + stride,
                USED_RING + stride,
            );
        }
        self.write32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    pub fn setup_queue(&mut self, size: u16, desc: u64, avail: u64, used: u64) {
        self.setup_queue_at(0, size, desc, avail, used);
    }

    pub fn setup_queue_at(&mut self, q: u32, size: u16, desc: u64, avail: u64, used: u64) {
        self.write32(reg::QUEUE_SEL, q);
        assert!(self.read32(reg::QUEUE_NUM_MAX) >= u32::from(size));
        self.write32(reg::QUEUE_NUM, u32::from(size));
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, desc),
            (reg::QUEUE_DRIVER_LOW, avail),
            (reg::QUEUE_DEVICE_LOW, used),
        ] {
            self.write32(low, addr as u32);
            self.write32(low + 4, (addr >> 32) as u32);
        }
        self.write32(reg::QUEUE_READY, 1);
        self.queue_size = size;
    }

    /// Writes descriptor `index` of queue 0.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc_on(0, index, addr, len, flags, next);
    }

    /// Writes descriptor `index` of queue `q`.
    pub fn write_desc_on(&self, q: u16, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC_TABLE + u64::from(q) * QUEUE_STRIDE + u64::from(index) * 16);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Writes `buffers` (address, length, device-writable) as a chain from descriptor 0,
    /// offers it and notifies queue 0.
    pub fn submit(&mut self, buffers: &[(u64, u32, bool)]) {
        self.submit_on(0, buffers);
    }

    /// As [`submit`](Self::submit), on queue `q`.
    pub fn submit_on(&mut self, q: u16, buffers: &[(u64, u32, bool)]) {
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let last = i + 1 == buffers.len();
            let flags = if last { 0 } else { F_NEXT } | if writable { F_WRITE } else { 0 };
            self.write_desc_on(q, i as u16, addr, len, flags, i as u16 + 1);
        }
        self.offer_on(q, 0);
        self.write32(reg::QUEUE_NOTIFY, u32::from(q));
    }

    /// Puts chain `head` on queue 0's available ring (without notifying).
    pub fn offer(&mut self, head: u16) {
        self.offer_on(0, head);
    }

    /// Puts chain `head` on queue `q`'s available ring (without notifying).
    pub fn offer_on(&mut self, q: u16, head: u16) {
        let avail = AVAIL_RING + u64::from(q) * QUEUE_STRIDE;
        let idx = &mut self.avail_idx[usize::from(q)];
        let slot = u64::from(*idx % self.queue_size);
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + slot * 2))
            .unwrap();
        *idx = idx.wrapping_add(1);
        let idx = *idx;
        self.mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    }

    /// Writes queue 0's available index as a (possibly misbehaving) driver would.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// Queue 0's used ring: its index and the elements (id, len) so far.
    pub fn used(&self) -> (u16, Vec<(u32, u32)>) {
        self.used_on(0)
    }

    /// Waits (5 s at most) until queue `q`'s used index reaches `idx` (a device thread
    /// uses it); returns the used elements.
    pub fn wait_used(&self, q: u16, idx: u16) -> Vec<(u32, u32)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (now, used) = self.used_on(q);
            if now >= idx {
                return used;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "queue {q}: used index stuck at {now}"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Queue `q`'s used ring.
    pub fn used_on(&self, q: u16) -> (u16, Vec<(u32, u32)>) {
        let used = USED_RING + u64::from(q) * QUEUE_STRIDE;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let elements = (0..idx.min(self.queue_size))
            .map(|i| {
                let at = used + 4 + u64::from(i) * 8;
                (
                    self.mem.read_obj(GuestAddress(at)).unwrap(),
                    self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
                )
            })
            .collect();
        (idx, elements)
    }
}
