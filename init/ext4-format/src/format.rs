//! Writing the file system: superblocks, group descriptors, bitmaps, the reserved inodes, the
//! root and lost+found directories and the journal's superblock. Everything else on the disk
//! is left as it was: the kernel treats inode tables past each group's used inodes as unused
//! (`uninit_bg`) and zeroes them in the background, and a clean journal is never read past its
//! superblock.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::FormatExt4Error;
use crate::layout::{BLOCK_SIZE, DESCRIPTOR_SIZE, FIRST_INODE, INODE_SIZE, Layout};

const MAGIC: u16 = 0xEF53;
const ROOT_INODE: u32 = 2;
const JOURNAL_INODE: u32 = 8;
const LOST_FOUND_INODE: u32 = 11;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_EXT_ATTR: u32 = 0x8;
const COMPAT_DIR_INDEX: u32 = 0x20;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;

const GROUP_INODE_UNINIT: u16 = 0x1;
const INODE_EXTENTS_FLAG: u32 = 0x80000;
const EXTENT_MAGIC: u16 = 0xF30A;
const EXTRA_ISIZE: u16 = 32;
const FILE_TYPE_DIRECTORY: u8 = 2;

const JOURNAL_MAGIC: u32 = 0xC03B_3998;
const JOURNAL_SUPERBLOCK_V2: u32 = 4;

/// The label of a file system being formatted: the primary superblock carries it from the
/// first write to the last, so that an interrupted format is known as one (and formatted again)
/// rather than taken for data.
pub const FORMATTING_LABEL: &str = "(formatting)";

/// What formatting writes to: a block device or a file (a fake in tests).
pub trait Disk {
    /// Its size in bytes.
    fn size(&self) -> std::io::Result<u64>;
    /// Writes all of `bytes` at `offset`.
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()>;
    /// Flushes what was written to stable storage.
    fn sync(&self) -> std::io::Result<()>;
}

impl Disk for File {
    /// A block device's metadata says 0 bytes; its end says its size.
    fn size(&self) -> std::io::Result<u64> {
        use std::io::Seek;
        let mut handle = self;
        handle.seek(std::io::SeekFrom::End(0))
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        FileExt::write_all_at(self, bytes, offset)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.sync_all()
    }
}

/// What the new file system is named and stamped with.
#[derive(Clone, Debug)]
pub struct FormatOptions {
    /// The volume label (at most 16 bytes).
    pub label: String,
    /// The file system's UUID.
    pub uuid: [u8; 16],
    /// The seed of directory-index hashes.
    pub hash_seed: [u8; 16],
    /// The journal's first transaction ID: random, so that a stale journal block left on the
    /// disk by an earlier file system never passes for one of this journal's.
    pub journal_sequence: u32,
    /// Creation time, seconds since the epoch.
    pub now: u32,
}

/// What was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Formatted {
    /// Blocks of 4 KiB in the file system.
    pub blocks: u64,
    /// Block groups.
    pub groups: usize,
    /// Inodes.
    pub inodes: u64,
    /// Journal blocks.
    pub journal_blocks: u64,
    /// Blocks free for files.
    pub free_blocks: u64,
}

impl Formatted {
    /// The file system's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * BLOCK_SIZE
    }
}

/// Formats `disk` (a block device or a file) as an empty ext4 file system filling it.
///
/// The primary superblock is written first labelled [`FORMATTING_LABEL`], then everything
/// else, then (after a flush) the superblock with its own label: an interrupted format
/// leaves a disk that [`crate::probe`] calls [`crate::DiskContent::Unfinished`].
pub fn format(disk: &impl Disk, options: &FormatOptions) -> Result<Formatted, FormatExt4Error> {
    if options.label.len() > 16 || options.label == FORMATTING_LABEL {
        return Err(FormatExt4Error::Label(options.label.clone()));
    }
    let size = disk_size(disk)?;
    let layout = Layout::plan(size)?;
    let descriptors = descriptor_table(&layout, options);
    let write = |block: u64, bytes: &[u8]| {
        disk.write_all_at(bytes, block * BLOCK_SIZE)
            .map_err(|source| FormatExt4Error::Write { block, source })
    };
    let sync = || {
        disk.sync()
            .map_err(|source| FormatExt4Error::Sync { source })
    };
    let first_block = |label: &str| {
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        let labelled = FormatOptions {
            label: label.to_string(),
            ..options.clone()
        };
        block[1024..2048].copy_from_slice(&superblock(&layout, &labelled, 0));
        block
    };
    write(0, &first_block(FORMATTING_LABEL))?;
    sync()?;
    for (index, group) in layout.groups.iter().enumerate() {
        if group.has_superblock && index > 0 {
            write(group.start, &superblock(&layout, options, index as u16))?;
        }
        if group.has_superblock {
            write(group.start + 1, &descriptors)?;
        }
        write(group.block_bitmap, &block_bitmap(&layout, index))?;
        write(group.inode_bitmap, &inode_bitmap(&layout, index))?;
    }
    write(
        layout.groups[0].inode_table,
        &reserved_inodes(&layout, options),
    )?;
    write(
        layout.root_block,
        &directory_block(
            ROOT_INODE,
            ROOT_INODE,
            Some(("lost+found", LOST_FOUND_INODE)),
        ),
    )?;
    write(
        layout.lost_found_block,
        &directory_block(LOST_FOUND_INODE, ROOT_INODE, None),
    )?;
    write(layout.journal_start, &journal_superblock(&layout, options))?;
    sync()?;
    write(0, &first_block(&options.label))?;
    sync()?;
    Ok(Formatted {
        blocks: layout.blocks,
        groups: layout.groups.len(),
        inodes: layout.inodes(),
        journal_blocks: layout.journal_blocks,
        free_blocks: layout.free_blocks(),
    })
}

/// The disk's size in bytes.
fn disk_size(disk: &impl Disk) -> Result<u64, FormatExt4Error> {
    disk.size()
        .map_err(|source| FormatExt4Error::Size { source })
}

fn put16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put32_be(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// The 1024-byte superblock as group `group` stores it.
fn superblock(layout: &Layout, options: &FormatOptions, group: u16) -> Vec<u8> {
    let mut sb = vec![0u8; 1024];
    let inodes = layout.inodes() as u32;
    put32(&mut sb, 0x00, inodes);
    put32(&mut sb, 0x04, layout.blocks as u32);
    put32(&mut sb, 0x0C, layout.free_blocks() as u32);
    put32(&mut sb, 0x10, inodes - FIRST_INODE);
    put32(&mut sb, 0x14, 0); // first data block: 0 with 4 KiB blocks
    put32(&mut sb, 0x18, 2); // log2(block size) - 10
    put32(&mut sb, 0x1C, 2); // the cluster size: the block size
    put32(&mut sb, 0x20, crate::layout::BLOCKS_PER_GROUP as u32);
    put32(&mut sb, 0x24, crate::layout::BLOCKS_PER_GROUP as u32);
    put32(&mut sb, 0x28, layout.inodes_per_group as u32);
    put32(&mut sb, 0x30, options.now); // last write
    put16(&mut sb, 0x36, u16::MAX); // no mount-count check
    put16(&mut sb, 0x38, MAGIC);
    put16(&mut sb, 0x3A, 1); // cleanly unmounted
    put16(&mut sb, 0x3C, 2); // on errors: remount read-only (etcd stops rather than corrupts)
    put32(&mut sb, 0x40, options.now); // last check
    put32(&mut sb, 0x4C, 1); // dynamic inode sizes
    put32(&mut sb, 0x54, FIRST_INODE);
    put16(&mut sb, 0x58, INODE_SIZE as u16);
    put16(&mut sb, 0x5A, group);
    put32(
        &mut sb,
        0x5C,
        COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_DIR_INDEX,
    );
    put32(&mut sb, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS);
    put32(
        &mut sb,
        0x64,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_HUGE_FILE
            | RO_COMPAT_GDT_CSUM
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE,
    );
    sb[0x68..0x78].copy_from_slice(&options.uuid);
    sb[0x78..0x78 + options.label.len()].copy_from_slice(options.label.as_bytes());
    put32(&mut sb, 0xE0, JOURNAL_INODE);
    for (index, word) in options.hash_seed.chunks(4).enumerate() {
        sb[0xEC + index * 4..0xF0 + index * 4].copy_from_slice(word);
    }
    sb[0xFC] = 1; // directory hashes: half_md4
    sb[0xFD] = 1; // s_jnl_blocks holds a copy of the journal inode's block map
    put32(&mut sb, 0x100, 0x4 | 0x8); // mount with user_xattr and acl by default
    put32(&mut sb, 0x108, options.now); // made at
    let journal = journal_inode_blocks(layout);
    for (index, word) in journal.chunks(4).enumerate() {
        sb[0x10C + index * 4..0x110 + index * 4].copy_from_slice(word);
    }
    put32(
        &mut sb,
        0x10C + 16 * 4,
        (layout.journal_blocks * BLOCK_SIZE) as u32,
    );
    put16(&mut sb, 0x15C, EXTRA_ISIZE); // min extra inode size
    put16(&mut sb, 0x15E, EXTRA_ISIZE); // wanted extra inode size
    // Directory hashes treat names as the platform's char does (signed on x86).
    let signed_char = std::ffi::c_char::MIN != 0;
    put32(&mut sb, 0x160, if signed_char { 0x1 } else { 0x2 });
    sb
}

/// The group descriptor table, whole blocks, with each descriptor's checksum.
fn descriptor_table(layout: &Layout, options: &FormatOptions) -> Vec<u8> {
    let mut table = vec![0u8; (layout.descriptor_blocks * BLOCK_SIZE) as usize];
    let crc = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);
    for (index, group) in layout.groups.iter().enumerate() {
        let at = index * DESCRIPTOR_SIZE as usize;
        let desc = &mut table[at..at + DESCRIPTOR_SIZE as usize];
        put32(desc, 0x00, group.block_bitmap as u32);
        put32(desc, 0x04, group.inode_bitmap as u32);
        put32(desc, 0x08, group.inode_table as u32);
        put16(
            desc,
            0x0C,
            (group.blocks - layout.used_blocks(index)) as u16,
        );
        let ipg = layout.inodes_per_group as u16;
        if index == 0 {
            put16(desc, 0x0E, ipg - FIRST_INODE as u16);
            put16(desc, 0x10, 2); // the root and lost+found
            put16(desc, 0x1C, ipg - FIRST_INODE as u16);
        } else {
            put16(desc, 0x0E, ipg);
            put16(desc, 0x12, GROUP_INODE_UNINIT);
            put16(desc, 0x1C, ipg);
        }
        // The kernel's crc16 over the UUID, the group number and the descriptor up to its
        // checksum field (CRC-16 with the MODBUS parameters).
        let mut digest = crc.digest();
        digest.update(&options.uuid);
        digest.update(&(index as u32).to_le_bytes());
        digest.update(&desc[..0x1E]);
        let sum = digest.finalize();
        put16(desc, 0x1E, sum);
    }
    table
}

/// Sets bits `from..to` of a bitmap.
fn set_bits(bitmap: &mut [u8], from: u64, to: u64) {
    for bit in from..to {
        bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
    }
}

/// Group `index`'s block bitmap: its metadata (and group 0's directories and journal) in use,
/// and the bits past a short last group's end set, as the kernel expects.
fn block_bitmap(layout: &Layout, index: usize) -> Vec<u8> {
    let mut bitmap = vec![0u8; BLOCK_SIZE as usize];
    set_bits(&mut bitmap, 0, layout.used_blocks(index));
    set_bits(&mut bitmap, layout.groups[index].blocks, BLOCK_SIZE * 8);
    bitmap
}

/// Group `index`'s inode bitmap: group 0's reserved inodes in use, and the bits past the
/// group's inodes set.
fn inode_bitmap(layout: &Layout, index: usize) -> Vec<u8> {
    let mut bitmap = vec![0u8; BLOCK_SIZE as usize];
    if index == 0 {
        set_bits(&mut bitmap, 0, u64::from(FIRST_INODE));
    }
    set_bits(&mut bitmap, layout.inodes_per_group, BLOCK_SIZE * 8);
    bitmap
}

/// An inode's 60-byte block map: an extent header and one extent of `length` blocks from
/// `start`.
fn one_extent(start: u64, length: u64) -> [u8; 60] {
    let mut map = [0u8; 60];
    put16(&mut map, 0, EXTENT_MAGIC);
    put16(&mut map, 2, 1); // entries
    put16(&mut map, 4, 4); // room for four in the inode
    put16(&mut map, 6, 0); // depth: leaves
    put32(&mut map, 12, 0); // first logical block
    put16(&mut map, 16, length as u16);
    put16(&mut map, 18, (start >> 32) as u16);
    put32(&mut map, 20, start as u32);
    map
}

fn journal_inode_blocks(layout: &Layout) -> [u8; 60] {
    one_extent(layout.journal_start, layout.journal_blocks)
}

/// One inode: `mode`, size and links, and its blocks as one extent.
fn inode(mode: u16, links: u16, block_map: &[u8; 60], blocks: u64, now: u32) -> Vec<u8> {
    let mut inode = vec![0u8; INODE_SIZE as usize];
    put16(&mut inode, 0x00, mode);
    let size = blocks * BLOCK_SIZE;
    put32(&mut inode, 0x04, size as u32);
    put32(&mut inode, 0x08, now);
    put32(&mut inode, 0x0C, now);
    put32(&mut inode, 0x10, now);
    put16(&mut inode, 0x1A, links);
    put32(&mut inode, 0x1C, (blocks * BLOCK_SIZE / 512) as u32);
    put32(&mut inode, 0x20, INODE_EXTENTS_FLAG);
    inode[0x28..0x64].copy_from_slice(block_map);
    put32(&mut inode, 0x6C, (size >> 32) as u32);
    put16(&mut inode, 0x80, EXTRA_ISIZE);
    put32(&mut inode, 0x90, now); // created
    inode
}

/// The inode table's first block: inodes 1 to 16, of which the root (2), the journal (8) and
/// lost+found (11) are made and the rest are reserved and empty.
fn reserved_inodes(layout: &Layout, options: &FormatOptions) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let mut place = |number: u32, bytes: Vec<u8>| {
        let at = (number as usize - 1) * INODE_SIZE as usize;
        block[at..at + INODE_SIZE as usize].copy_from_slice(&bytes);
    };
    place(
        ROOT_INODE,
        inode(
            0o040755,
            3,
            &one_extent(layout.root_block, 1),
            1,
            options.now,
        ),
    );
    place(
        JOURNAL_INODE,
        inode(
            0o100600,
            1,
            &journal_inode_blocks(layout),
            layout.journal_blocks,
            options.now,
        ),
    );
    place(
        LOST_FOUND_INODE,
        inode(
            0o040700,
            2,
            &one_extent(layout.lost_found_block, 1),
            1,
            options.now,
        ),
    );
    block
}

/// A directory block holding `.`, `..` and optionally one more directory entry.
fn directory_block(this: u32, parent: u32, child: Option<(&str, u32)>) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let mut at = 0usize;
    let mut entries: Vec<(&str, u32)> = vec![(".", this), ("..", parent)];
    entries.extend(child);
    let last = entries.len() - 1;
    for (position, (name, inode)) in entries.into_iter().enumerate() {
        let length = if position == last {
            BLOCK_SIZE as usize - at
        } else {
            (8 + name.len()).div_ceil(4) * 4
        };
        put32(&mut block, at, inode);
        put16(&mut block, at + 4, length as u16);
        block[at + 6] = name.len() as u8;
        block[at + 7] = FILE_TYPE_DIRECTORY;
        block[at + 8..at + 8 + name.len()].copy_from_slice(name.as_bytes());
        at += length;
    }
    block
}

/// The journal's superblock (big-endian, as jbd2 keeps it): empty and clean.
fn journal_superblock(layout: &Layout, options: &FormatOptions) -> Vec<u8> {
    let mut sb = vec![0u8; BLOCK_SIZE as usize];
    put32_be(&mut sb, 0x00, JOURNAL_MAGIC);
    put32_be(&mut sb, 0x04, JOURNAL_SUPERBLOCK_V2);
    put32_be(&mut sb, 0x0C, BLOCK_SIZE as u32);
    put32_be(&mut sb, 0x10, layout.journal_blocks as u32);
    put32_be(&mut sb, 0x14, 1); // the first log block
    put32_be(&mut sb, 0x18, options.journal_sequence);
    put32_be(&mut sb, 0x1C, 0); // start 0: nothing to recover
    sb[0x30..0x40].copy_from_slice(&options.uuid);
    put32_be(&mut sb, 0x40, 1); // one file system uses it
    sb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_entries_fill_the_block() {
        let block = directory_block(2, 2, Some(("lost+found", 11)));
        let rec = |at: usize| u16::from_le_bytes([block[at + 4], block[at + 5]]) as usize;
        assert_eq!(rec(0), 12);
        assert_eq!(rec(12), 12);
        assert_eq!(rec(24), 4096 - 24);
        assert_eq!(&block[32..42], b"lost+found");
    }

    #[test]
    fn group_descriptor_checksums_match_the_kernels_crc16() {
        // The kernel's crc16 (lib/crc16.c) starting from 0xffff: "123456789" gives 0x4b37.
        let crc = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);
        assert_eq!(crc.checksum(b"123456789"), 0x4b37);
    }
}
