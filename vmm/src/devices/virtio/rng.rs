//! virtio-rng (virtio 1.2, section 5.4): one queue whose writable buffers the device fills
//! with bytes from the host's getrandom(2).

use std::io::Write;

use virtio_queue::{Queue, Writer};
use vm_memory::GuestMemoryMmap;

use super::queue::{BrokenQueue, drain_queue};
use super::{VIRTIO_F_VERSION_1, VirtioDevice, device_type};

/// Queue size of the request queue.
const QUEUE_SIZE: u16 = 256;
/// Bytes given per request at most; a driver asking for more asks again.
const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// The entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    /// Bytes handed to the guest so far.
    pub bytes_given: u64,
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills the chain's writable buffers; returns the bytes written.
    fn fill(chain: super::queue::Chain<'_>, mem: &GuestMemoryMmap) -> u32 {
        let mut writer: Writer<'_> = match Writer::new(mem, chain) {
            Ok(writer) => writer,
            Err(error) => {
                tracing::warn!(%error, "virtio-rng: malformed request");
                return 0;
            }
        };
        let len = writer.available_bytes().min(MAX_BYTES_PER_REQUEST);
        let mut bytes = vec![0u8; len];
        if let Err(error) = getrandom::fill(&mut bytes) {
            tracing::warn!(%error, "virtio-rng: getrandom failed");
            return 0;
        }
        match writer.write_all(&bytes) {
            Ok(()) => len as u32,
            Err(error) => {
                tracing::warn!(%error, "virtio-rng: cannot write the request's buffers");
                writer.bytes_written() as u32
            }
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        vec![("bytes_given", self.bytes_given)]
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, BrokenQueue> {
        let mut given = 0u64;
        let used = drain_queue(queue, mem, |chain| {
            let written = Self::fill(chain, mem);
            given += u64::from(written);
            written
        })?;
        self.bytes_given += given;
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use crate::devices::virtio::test_driver::{BUFFERS, TestDriver};

    use super::*;

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        driver.start(16);
        driver.submit(&[(BUFFERS, 32, true), (BUFFERS + 0x100, 32, true)]);
        assert_eq!(driver.used(), (1, vec![(0, 64)]));
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        driver
            .mem
            .read_slice(&mut a, GuestAddress(BUFFERS))
            .unwrap();
        driver
            .mem
            .read_slice(&mut b, GuestAddress(BUFFERS + 0x100))
            .unwrap();
        assert_ne!(a, [0; 32]);
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_chains_are_used_empty() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        driver.start(16);
        // A buffer past the end of guest memory, then a read-only one.
        driver.submit(&[(0xffff_0000, 32, true)]);
        driver.submit(&[(BUFFERS, 32, false)]);
        let (idx, used) = driver.used();
        assert_eq!(idx, 2);
        assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
    }

    #[test]
    fn a_descriptor_loop_ends() {
        let mut driver = TestDriver::new(Box::new(Rng::new()));
        driver.start(16);
        driver.write_desc(0, BUFFERS, 16, 1 | 2, 1);
        driver.write_desc(1, BUFFERS + 16, 16, 1 | 2, 0);
        driver.offer(0);
        driver.write32(crate::devices::virtio::mmio::reg::QUEUE_NOTIFY, 0);
        let (idx, _) = driver.used();
        assert_eq!(idx, 1, "the looping chain is used, not spun on");
    }
}
