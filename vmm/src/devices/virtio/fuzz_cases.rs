//! The queue cases that fuzzing runs against each device, shared by the randomized tests
//! (`fuzz.rs`, a seeded xorshift as the source of choices) and the `cargo fuzz` targets
//! (`vmm/fuzz`, libFuzzer's input as the source): each case fills the guest memory a driver
//! controls (descriptor tables, indirect tables, rings, buffers, indices) with random and
//! half-plausible values, writes random registers, and notifies. The devices must neither
//! panic nor hang, and must use no more chains than were offered.

use std::path::Path;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;
use super::mmio::reg;
use super::test_driver::{AVAIL_RING, BUFFERS, DESC_TABLE, QUEUE_STRIDE, TestDriver};

/// Where a case takes its choices from.
pub trait Entropy {
    /// The next 64 random bits.
    fn next(&mut self) -> u64;
    /// A value below `n` (which is not 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True once in `one_in` times.
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    /// Fills `bytes`.
    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let value = self.next().to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
    }
    /// Fills a large area (buffers, frames) whose exact bytes matter less than the choices
    /// around them.
    fn fill_bulk(&mut self, bytes: &mut [u8]) {
        self.fill(bytes);
    }
}

/// xorshift64*: small, seedable, good enough to explore.
#[derive(Debug)]
pub struct Xorshift(pub u64);

impl Entropy for Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A fuzzer's input as the source of choices: its bytes, eight at a time, then an xorshift
/// seeded from the input, so the same input always makes the same case. Bulk fills (128 KiB
/// of buffers, frames) come from the xorshift only: they would otherwise eat the whole input,
/// and the choices that steer the devices (descriptors, ring entries, indices, registers)
/// would no longer be the input's.
#[derive(Debug)]
pub struct FuzzInput<'a> {
    bytes: &'a [u8],
    after: Xorshift,
}

impl<'a> FuzzInput<'a> {
    /// Choices from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        // FNV-1a over the input: the seed of what comes after it.
        let seed = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
        Self {
            bytes,
            after: Xorshift(seed | 1),
        }
    }
}

impl Entropy for FuzzInput<'_> {
    fn fill_bulk(&mut self, bytes: &mut [u8]) {
        self.after.fill(bytes);
    }
    fn next(&mut self) -> u64 {
        if self.bytes.is_empty() {
            return self.after.next();
        }
        let n = self.bytes.len().min(8);
        let mut value = [0u8; 8];
        value[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        u64::from_le_bytes(value)
    }
}

const QUEUE_SIZE: u16 = 16;

/// Writes random and half-plausible descriptors, indirect tables, ring entries and buffer
/// bytes for queue `q`, offers up to `QUEUE_SIZE + 4` entries (or a wild index), and
/// returns the available index written.
fn scramble_queue(driver: &TestDriver, rng: &mut impl Entropy, q: u16) -> u16 {
    let mem = &driver.mem;
    let table = DESC_TABLE + u64::from(q) * QUEUE_STRIDE;
    for index in 0..u64::from(QUEUE_SIZE) {
        let mut desc = [0u8; 16];
        if rng.chance(4) {
            rng.fill(&mut desc);
        } else {
            let addr = match rng.below(4) {
                0 => (1 << 20) - rng.below(4096),
                _ => BUFFERS + rng.below(0x2_0000),
            };
            let len: u32 = match rng.below(8) {
                0 => 0,
                1 => 1,
                2 => 16,
                3 => 44 + rng.below(64) as u32,
                4 => 512,
                5 => 4096 + 44,
                6 => rng.below(70_000) as u32,
                _ => u32::MAX - rng.below(16) as u32,
            };
            let flags = rng.below(8) as u16; // NEXT, WRITE, INDIRECT in any mix
            let next = rng.below(u64::from(QUEUE_SIZE) + 4) as u16;
            desc[0..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..16].copy_from_slice(&next.to_le_bytes());
        }
        mem.write_slice(&desc, GuestAddress(table + index * 16))
            .unwrap();
    }
    // Buffers and indirect tables: random bytes over the buffer area.
    let mut buffers = vec![0u8; 0x2_0000];
    rng.fill_bulk(&mut buffers);
    mem.write_slice(&buffers, GuestAddress(BUFFERS)).unwrap();
    let avail = AVAIL_RING + u64::from(q) * QUEUE_STRIDE;
    for slot in 0..u64::from(QUEUE_SIZE) {
        let head = rng.below(u64::from(QUEUE_SIZE) + 2) as u16;
        mem.write_obj(head, GuestAddress(avail + 4 + slot * 2))
            .unwrap();
    }
    let used_idx: u16 = mem
        .read_obj(GuestAddress(avail + 0x1000 + 2))
        .unwrap_or_default();
    let idx = if rng.chance(8) {
        rng.next() as u16
    } else {
        used_idx.wrapping_add(rng.below(u64::from(QUEUE_SIZE) + 4) as u16)
    };
    mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    idx
}

/// One case against a fresh device: set up, scramble each queue and notify it (a few
/// rounds), with random register writes now and then; checks the used index.
fn device_case(rng: &mut impl Entropy, device: Box<dyn VirtioDevice>, queues: u16) -> TestDriver {
    let mut driver = TestDriver::new(device);
    driver.start(QUEUE_SIZE);
    for _ in 0..1 + rng.below(3) {
        for q in 0..queues {
            let before = driver.used_on(q).0;
            scramble_queue(&driver, rng, q);
            driver.write32(reg::QUEUE_NOTIFY, u32::from(q));
            let after = driver.used_on(q).0;
            assert!(
                after.wrapping_sub(before) <= QUEUE_SIZE,
                "queue {q}: used {before} -> {after}, more than the queue holds"
            );
        }
        if rng.chance(4) {
            let offset = rng.below(0x120) & !3;
            driver.write32(offset, rng.next() as u32);
        }
    }
    driver
}

/// Block: a fresh device over the raw image at `disk` (read-only half the time), one case.
pub fn block_case(rng: &mut impl Entropy, disk: &Path) {
    let read_only = rng.chance(2);
    let block = super::block::Block::open(disk, read_only, "fuzz").expect("the fuzzed disk opens");
    device_case(rng, Box::new(block), 1);
}

/// Net: both queues scrambled and notified, then frames of random sizes delivered into
/// scrambled receive buffers (the "tap" is one end of a socket pair).
pub fn net_case(rng: &mut impl Entropy) {
    let (ours, peer) = std::os::unix::net::UnixDatagram::pair().expect("socket pair");
    peer.set_nonblocking(true).expect("non-blocking");
    ours.set_nonblocking(true).expect("non-blocking");
    let tap = Arc::new(std::fs::File::from(std::os::fd::OwnedFd::from(ours)));
    let net = super::net::Net::new(tap, [2, 0, 0, 0, 0, 1], EventFd::new(0).expect("eventfd"));
    let driver = device_case(rng, Box::new(net), 2);
    for _ in 0..4 {
        scramble_queue(&driver, rng, 0);
        let mut frame = vec![0u8; rng.below(70_000) as usize];
        rng.fill_bulk(&mut frame);
        driver
            .transport
            .lock()
            .expect("transport lock")
            .use_queue(0, |queue, mem| {
                super::net::deliver_frame(queue, mem, &frame)
            });
    }
}

/// Vsock: all three queues scrambled and notified, then the muxer's parsing of the
/// transmit queue, without its thread.
pub fn vsock_case(rng: &mut impl Entropy) {
    let vsock = super::vsock::Vsock::new(3, EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let driver = device_case(rng, Box::new(vsock), 3);
    scramble_queue(&driver, rng, 1);
    driver
        .transport
        .lock()
        .expect("transport lock")
        .use_queue(1, |queue, mem| {
            super::queue::drain_queue(queue, mem, |chain| {
                if let Ok(mut reader) = virtio_queue::Reader::new(mem, chain) {
                    let _ = super::vsock::muxer::read_packet(&mut reader);
                }
                0
            })
        });
}

/// Rng: its queue scrambled, then random reads and writes of any width anywhere in the
/// register file and configuration space, then a notify.
pub fn rng_case(rng: &mut impl Entropy) {
    use crate::devices::BusDevice;
    let mut driver = device_case(rng, Box::new(super::rng::Rng::new()), 1);
    for _ in 0..16 {
        let offset = rng.below(0x200);
        let mut data = vec![0u8; [1, 2, 4, 8][rng.below(4) as usize]];
        rng.fill(&mut data);
        let mut transport = driver.transport.lock().expect("transport lock");
        if rng.chance(2) {
            transport.write(offset, &data);
        } else {
            transport.read(offset, &mut data);
        }
    }
    driver.write32(reg::QUEUE_NOTIFY, 0);
}
