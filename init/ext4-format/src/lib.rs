//! Formats a block device as an empty ext4 file system, and says what a disk already holds,
//! so that init prepares a node's data disk on first boot without a mkfs binary in the image.
//!
//! The file system is what `mke2fs -t ext4` makes with lazy initialisation, without what a
//! data disk does not need: 4 KiB blocks, 256-byte inodes, extents, a 4 to 64 MiB journal in
//! block group 0, sparse superblock backups, group descriptor checksums (`uninit_bg`: the
//! kernel zeroes the inode tables in the background, so formatting writes a few blocks per
//! group, not the tables), no blocks reserved for root. Not made: flex_bg, 64bit (so at most
//! 16 TiB), metadata_csum, resize_inode. docs/node-os.md says why.

mod format;
mod layout;
mod probe;

pub use format::{Disk, FORMATTING_LABEL, FormatOptions, Formatted, format};
pub use layout::{MAX_DISK_BYTES, MIN_DISK_BYTES};
pub use probe::{DiskContent, PROBE_BYTES, probe};

/// Formatting a disk failed.
#[derive(Debug, thiserror::Error)]
pub enum FormatExt4Error {
    /// The disk is too small to hold a file system with a journal.
    #[error("the disk has {size} bytes; an ext4 file system needs at least {min}")]
    TooSmall {
        /// The disk's size.
        size: u64,
        /// The least it takes.
        min: u64,
    },
    /// The disk is larger than a file system without the 64bit feature covers.
    #[error("the disk has {size} bytes; this format covers at most {max} (16 TiB)")]
    TooLarge {
        /// The disk's size.
        size: u64,
        /// The most it covers.
        max: u64,
    },
    /// The label does not fit the superblock, or is the one an unfinished format carries.
    #[error("label {0:?} is longer than 16 bytes or reserved")]
    Label(String),
    /// The disk's size could not be read.
    #[error("reading the disk's size")]
    Size {
        /// Why.
        source: std::io::Error,
    },
    /// A block could not be written.
    #[error("writing block {block}")]
    Write {
        /// The block.
        block: u64,
        /// Why.
        source: std::io::Error,
    },
    /// Flushing the disk failed.
    #[error("flushing the disk")]
    Sync {
        /// Why.
        source: std::io::Error,
    },
}

/// Reading a disk's first blocks failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the disk's first blocks")]
pub struct ProbeDiskError {
    /// Why.
    pub source: std::io::Error,
}
