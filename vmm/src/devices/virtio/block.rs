//! virtio-blk (virtio 1.2, section 5.2) over a raw image file: reads, writes, flush (the
//! file is synced) and the device ID; read-only disks offer VIRTIO_BLK_F_RO and refuse
//! writes. Every request is checked against the disk's size and the chain's shape before a
//! byte moves.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_queue::{Queue, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::queue::{BrokenQueue, Chain, drain_queue};
use super::{VIRTIO_F_VERSION_1, VirtioDevice, device_type, read_config_bytes};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size of the request queue.
const QUEUE_SIZE: u16 = 256;
/// Bytes moved between the file and guest memory at a time.
const CHUNK: usize = 64 * 1024;
/// Length of the device ID string (VIRTIO_BLK_ID_BYTES).
const ID_BYTES: usize = 20;

/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: the device honours flush requests.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request types.
mod request {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Request status bytes.
pub mod request_status {
    /// Done.
    pub const OK: u8 = 0;
    /// The request failed (an I/O error, out of range, or a write to a read-only disk).
    pub const IOERR: u8 = 1;
    /// The request type is not supported.
    pub const UNSUPP: u8 = 2;
}

/// The disk image cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("--disk {}: cannot be opened {}", path.display(), if *read_only { "read-only" } else { "read-write" })]
pub struct OpenDiskError {
    /// The image.
    pub path: std::path::PathBuf,
    /// How it was opened.
    pub read_only: bool,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// A block device over a raw image file.
#[derive(Debug)]
pub struct Block {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    counters: BlockCounters,
}

/// What a block device has done, for the API's metrics.
#[derive(Debug, Default, Clone, Copy)]
struct BlockCounters {
    reads: u64,
    writes: u64,
    flushes: u64,
    failed: u64,
    bytes_read: u64,
    bytes_written: u64,
}

/// Why a well-formed request failed, for the log.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("sectors {sector}+{count} are past the disk's {capacity}")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(usize),
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("disk I/O failed")]
    Io(#[from] std::io::Error),
}

impl Block {
    /// Opens the raw image at `path`; its size, rounded down to whole sectors, is the disk's.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, OpenDiskError> {
        let error = |source| OpenDiskError {
            path: path.to_owned(),
            read_only,
            source,
        };
        let file = File::options()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(error)?;
        // The end of the file: a regular file's size, and a block device's too (whose
        // metadata says 0).
        let len = (&file).seek(SeekFrom::End(0)).map_err(error)?;
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            sectors: len / SECTOR_SIZE,
            read_only,
            id: id_bytes,
            counters: BlockCounters::default(),
        })
    }

    /// The disk's size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    fn check_range(&self, sector: u64, len: usize) -> Result<(), RequestError> {
        if !(len as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::Unaligned(len));
        }
        let count = len as u64 / SECTOR_SIZE;
        match sector.checked_add(count) {
            Some(end) if end <= self.sectors => Ok(()),
            _ => Err(RequestError::OutOfRange {
                sector,
                count,
                capacity: self.sectors,
            }),
        }
    }

    fn read_into(&self, sector: u64, data: &mut Writer<'_>) -> Result<(), RequestError> {
        let len = data.available_bytes();
        self.check_range(sector, len)?;
        let mut buffer = vec![0u8; len.min(CHUNK)];
        let mut offset = sector * SECTOR_SIZE;
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK);
            self.file.read_exact_at(&mut buffer[..n], offset)?;
            data.write_all(&buffer[..n])?;
            offset += n as u64;
            left -= n;
        }
        Ok(())
    }

    fn write_from(&self, sector: u64, data: &mut Reader<'_>) -> Result<(), RequestError> {
        if self.read_only {
            return Err(RequestError::ReadOnly);
        }
        let len = data.available_bytes();
        self.check_range(sector, len)?;
        let mut buffer = vec![0u8; len.min(CHUNK)];
        let mut offset = sector * SECTOR_SIZE;
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK);
            data.read_exact(&mut buffer[..n])?;
            self.file.write_all_at(&buffer[..n], offset)?;
            offset += n as u64;
            left -= n;
        }
        Ok(())
    }

    /// Runs one request; returns the bytes written into the chain (data and status byte).
    fn handle(&mut self, chain: Chain<'_>, mem: &GuestMemoryMmap) -> u32 {
        let (mut reader, mut writer): (Reader<'_>, Writer<'_>) =
            match (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) {
                (Ok(reader), Ok(writer)) => (reader, writer),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "virtio-blk: malformed request chain");
                    return 0;
                }
            };
        let mut header = [0u8; 16];
        if reader.read_exact(&mut header).is_err() || writer.available_bytes() == 0 {
            tracing::warn!("virtio-blk: request without a header or a status byte");
            return 0;
        }
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let Ok(mut status_byte) = writer.split_at(writer.available_bytes() - 1) else {
            return 0;
        };
        let (status, data_len) = match kind {
            request::IN => {
                let len = writer.available_bytes();
                match self.read_into(sector, &mut writer) {
                    Ok(()) => (request_status::OK, len),
                    Err(error) => {
                        tracing::warn!(%error, sector, "virtio-blk: read failed");
                        (request_status::IOERR, writer.bytes_written())
                    }
                }
            }
            request::OUT => match self.write_from(sector, &mut reader) {
                Ok(()) => (request_status::OK, 0),
                Err(error) => {
                    tracing::warn!(%error, sector, "virtio-blk: write failed");
                    (request_status::IOERR, 0)
                }
            },
            request::FLUSH if !self.read_only => match self.file.sync_all() {
                Ok(()) => (request_status::OK, 0),
                Err(error) => {
                    tracing::warn!(%error, "virtio-blk: flush failed");
                    (request_status::IOERR, 0)
                }
            },
            request::GET_ID => {
                let n = writer.available_bytes().min(ID_BYTES);
                match writer.write_all(&self.id[..n]) {
                    Ok(()) => (request_status::OK, n),
                    Err(_) => (request_status::IOERR, writer.bytes_written()),
                }
            }
            other => {
                tracing::debug!(kind = other, "virtio-blk: unsupported request");
                (request_status::UNSUPP, 0)
            }
        };
        let counters = &mut self.counters;
        match (kind, status) {
            (request::IN, request_status::OK) => {
                counters.reads += 1;
                counters.bytes_read += data_len as u64;
            }
            (request::OUT, request_status::OK) => {
                counters.writes += 1;
                counters.bytes_written += reader.bytes_read().saturating_sub(16) as u64;
            }
            (request::FLUSH, request_status::OK) => counters.flushes += 1,
            (_, request_status::IOERR) => counters.failed += 1,
            _ => {}
        }
        match status_byte.write_all(&[status]) {
            Ok(()) => (data_len + 1) as u32,
            Err(_) => data_len as u32,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | if self.read_only {
                VIRTIO_BLK_F_RO
            } else {
                VIRTIO_BLK_F_FLUSH
            }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    /// The configuration space: `capacity` (u64, sectors) at offset 0; the other fields
    /// belong to features not offered and read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.sectors.to_le_bytes(), offset, data);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, BrokenQueue> {
        drain_queue(queue, mem, |chain| self.handle(chain, mem))
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = self.counters;
        vec![
            ("reads", c.reads),
            ("writes", c.writes),
            ("flushes", c.flushes),
            ("failed", c.failed),
            ("bytes_read", c.bytes_read),
            ("bytes_written", c.bytes_written),
        ]
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use crate::devices::virtio::test_driver::{BUFFERS, TestDriver};

    use super::*;

    const HEADER: u64 = BUFFERS;
    const DATA: u64 = BUFFERS + 0x1000;
    const STATUS: u64 = BUFFERS + 0x100;

    fn disk(sectors: u64, read_only: bool) -> (tempfile::NamedTempFile, TestDriver) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / 512) as u8)
            .collect();
        std::fs::write(file.path(), bytes).unwrap();
        let block = Block::open(file.path(), read_only, "baton-vda").unwrap();
        let mut driver = TestDriver::new(Box::new(block));
        driver.start(16);
        (file, driver)
    }

    fn request(driver: &mut TestDriver, kind: u32, sector: u64, data: u32, writable: bool) -> u8 {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        driver
            .mem
            .write_slice(&header, GuestAddress(HEADER))
            .unwrap();
        driver.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut chain = vec![(HEADER, 16, false)];
        if data > 0 {
            chain.push((DATA, data, writable));
        }
        chain.push((STATUS, 1, true));
        driver.submit(&chain);
        driver.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    #[test]
    fn reads_writes_and_flushes_the_image() {
        let (file, mut driver) = disk(8, false);
        let mut config = [0u8; 8];
        driver.read_bytes(0x100, &mut config);
        assert_eq!(u64::from_le_bytes(config), 8, "capacity in sectors");
        assert_eq!(
            driver.device_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH
        );

        assert_eq!(request(&mut driver, request::IN, 2, 1024, true), 0);
        let mut read = vec![0u8; 1024];
        driver
            .mem
            .read_slice(&mut read, GuestAddress(DATA))
            .unwrap();
        assert!(read[..512].iter().all(|&b| b == 2) && read[512..].iter().all(|&b| b == 3));
        assert_eq!(driver.used().1.last(), Some(&(0, 1025)));

        driver
            .mem
            .write_slice(&[0xab; 512], GuestAddress(DATA))
            .unwrap();
        assert_eq!(request(&mut driver, request::OUT, 7, 512, false), 0);
        assert_eq!(request(&mut driver, request::FLUSH, 0, 0, false), 0);
        let on_disk = std::fs::read(file.path()).unwrap();
        assert!(on_disk[7 * 512..].iter().all(|&b| b == 0xab));
        assert!(on_disk[6 * 512..7 * 512].iter().all(|&b| b == 6));

        assert_eq!(request(&mut driver, request::GET_ID, 0, 20, true), 0);
        let mut id = [0u8; 20];
        driver.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..9], b"baton-vda");
        assert_eq!(
            request(&mut driver, 99, 0, 0, false),
            request_status::UNSUPP
        );
    }

    #[test]
    fn out_of_range_and_unaligned_requests_fail_without_touching_the_image() {
        let (file, mut driver) = disk(4, false);
        let before = std::fs::read(file.path()).unwrap();
        assert_eq!(request(&mut driver, request::OUT, 3, 1024, false), 1);
        assert_eq!(request(&mut driver, request::OUT, u64::MAX, 512, false), 1);
        assert_eq!(request(&mut driver, request::IN, 4, 512, true), 1);
        assert_eq!(request(&mut driver, request::OUT, 0, 100, false), 1);
        assert_eq!(std::fs::read(file.path()).unwrap(), before);
    }

    #[test]
    fn a_read_only_disk_refuses_writes() {
        let (file, mut driver) = disk(4, true);
        assert_eq!(
            driver.device_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_RO
        );
        let before = std::fs::read(file.path()).unwrap();
        assert_eq!(request(&mut driver, request::OUT, 0, 512, false), 1);
        assert_eq!(request(&mut driver, request::FLUSH, 0, 0, false), 2);
        assert_eq!(request(&mut driver, request::IN, 0, 512, true), 0);
        assert_eq!(std::fs::read(file.path()).unwrap(), before);
    }

    #[test]
    fn malformed_chains_are_used_without_a_status() {
        let (_file, mut driver) = disk(4, false);
        // No status byte: a header alone.
        driver.submit(&[(HEADER, 16, false)]);
        // A header too short.
        driver.submit(&[(HEADER, 8, false), (STATUS, 1, true)]);
        // Data outside guest memory.
        driver.submit(&[
            (HEADER, 16, false),
            (0xfff_0000, 512, true),
            (STATUS, 1, true),
        ]);
        let (idx, used) = driver.used();
        assert_eq!(idx, 3);
        assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
        assert_eq!(
            request(&mut driver, request::IN, 0, 512, true),
            0,
            "still works"
        );
    }
}
