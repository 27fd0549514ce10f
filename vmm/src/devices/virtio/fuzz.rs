//! Randomized queue handling ("fuzzing" on stable Rust; `cargo fuzz` needs a nightly
//! toolchain these machines do not have): each target fills the guest memory a driver
//! controls (descriptor tables, indirect tables, rings, buffers, indices) with random and
//! half-plausible values, writes random registers, and notifies; the devices must neither
//! panic nor hang, and must use no more chains than were offered. Each target runs for
//! BATON_FUZZ_SECONDS (default 2) from a seed printed first (BATON_FUZZ_SEED reproduces it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;
use super::mmio::reg;
use super::test_driver::{AVAIL_RING, BUFFERS, DESC_TABLE, QUEUE_STRIDE, TestDriver};

/// xorshift64*: small, seedable, good enough to explore.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let value = self.next().to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
    }
}

const QUEUE_SIZE: u16 = 16;

/// Runs `case` with fresh randomness until the time budget is spent.
fn fuzz(name: &str, mut case: impl FnMut(&mut Rng)) {
    let seed = std::env::var("BATON_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("getrandom");
            u64::from_le_bytes(bytes) | 1
        });
    let budget = std::env::var("BATON_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    eprintln!("fuzz {name}: seed {seed} (BATON_FUZZ_SEED), {budget} s");
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs_f64(budget);
    let mut cases = 0u64;
    while Instant::now() < deadline {
        case(&mut rng);
        cases += 1;
    }
    eprintln!("fuzz {name}: {cases} cases");
    assert!(cases > 0);
}

/// Writes random and half-plausible descriptors, indirect tables, ring entries and buffer
/// bytes for queue `q`, offers up to `QUEUE_SIZE + 4` entries (or a wild index), and
/// returns the available index written.
fn scramble_queue(driver: &TestDriver, rng: &mut Rng, q: u16) -> u16 {
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
    rng.fill(&mut buffers);
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
fn device_case(rng: &mut Rng, device: Box<dyn VirtioDevice>, queues: u16) -> TestDriver {
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

#[test]
fn fuzz_block_queue() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vec![0u8; 64 * 512]).unwrap();
    fuzz("block", |rng| {
        let read_only = rng.chance(2);
        let block = super::block::Block::open(file.path(), read_only, "fuzz").unwrap();
        device_case(rng, Box::new(block), 1);
    });
}

#[test]
fn fuzz_net_queues() {
    fuzz("net", |rng| {
        let (ours, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        ours.set_nonblocking(true).unwrap();
        let tap = Arc::new(std::fs::File::from(std::os::fd::OwnedFd::from(ours)));
        let net = super::net::Net::new(tap, [2, 0, 0, 0, 0, 1], EventFd::new(0).unwrap());
        let driver = device_case(rng, Box::new(net), 2);
        // The receive side: frames of random sizes into scrambled receive buffers.
        for _ in 0..4 {
            scramble_queue(&driver, rng, 0);
            let mut frame = vec![0u8; rng.below(70_000) as usize];
            rng.fill(&mut frame);
            driver.transport.lock().unwrap().use_queue(0, |queue, mem| {
                super::net::deliver_frame(queue, mem, &frame)
            });
        }
    });
}

#[test]
fn fuzz_vsock_transmit_parsing() {
    fuzz("vsock", |rng| {
        let vsock = super::vsock::Vsock::new(3, EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let driver = device_case(rng, Box::new(vsock), 3);
        // The muxer's parsing of the transmit queue, without its thread.
        scramble_queue(&driver, rng, 1);
        driver.transport.lock().unwrap().use_queue(1, |queue, mem| {
            super::queue::drain_queue(queue, mem, |chain| {
                if let Ok(mut reader) = virtio_queue::Reader::new(mem, chain) {
                    let _ = super::vsock::muxer::read_packet(&mut reader);
                }
                0
            })
        });
    });
}

#[test]
fn fuzz_rng_queue_and_registers() {
    fuzz("rng", |rng| {
        let mut driver = device_case(rng, Box::new(super::rng::Rng::new()), 1);
        for _ in 0..16 {
            let offset = rng.below(0x200);
            let mut data = vec![0u8; [1, 2, 4, 8][rng.below(4) as usize]];
            rng.fill(&mut data);
            use crate::devices::BusDevice;
            if rng.chance(2) {
                driver.transport.lock().unwrap().write(offset, &data);
            } else {
                driver.transport.lock().unwrap().read(offset, &mut data);
            }
        }
        driver.write32(reg::QUEUE_NOTIFY, 0);
    });
}
