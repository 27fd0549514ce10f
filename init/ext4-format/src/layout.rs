//! Where everything goes: block groups, their metadata, the root and lost+found directories
//! and the journal, computed from the disk's size alone.

use crate::FormatExt4Error;

/// The block size (4 KiB, as mke2fs chooses for any disk over 512 MiB and the kernel's page).
pub const BLOCK_SIZE: u64 = 4096;
/// Blocks per group: one block bitmap's worth.
pub const BLOCKS_PER_GROUP: u64 = BLOCK_SIZE * 8;
/// The on-disk inode size.
pub const INODE_SIZE: u64 = 256;
/// One inode per this many bytes of disk (mke2fs's default ratio).
const BYTES_PER_INODE: u64 = 16384;
/// The most inodes a group holds: one inode bitmap's worth would be 32768, mke2fs's ratio
/// never reaches it with 32768-block groups.
const MAX_INODES_PER_GROUP: u64 = BLOCKS_PER_GROUP * BLOCK_SIZE / BYTES_PER_INODE;
/// A group descriptor's size without the 64bit feature.
pub const DESCRIPTOR_SIZE: u64 = 32;
/// The first inode files may use; 1 to 10 are reserved, 11 is lost+found.
pub const FIRST_INODE: u32 = 11;
/// The smallest disk formatted: room for one group's metadata, the directories and the
/// smallest journal mke2fs makes (1024 blocks).
pub const MIN_DISK_BYTES: u64 = 16 << 20;
/// The largest disk formatted: block numbers are 32 bits without the 64bit feature.
pub const MAX_DISK_BYTES: u64 = u32::MAX as u64 * BLOCK_SIZE;
/// A last group smaller than its own metadata plus this many blocks is left out (its blocks
/// stay unused), as mke2fs does.
const MIN_LAST_GROUP_DATA_BLOCKS: u64 = 64;
/// The largest journal made: it lies in group 0, inside one extent.
const MAX_JOURNAL_BLOCKS: u64 = 16384;

/// One block group's place on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// Its first block.
    pub start: u64,
    /// Blocks in it (the last group may be shorter).
    pub blocks: u64,
    /// Whether it holds a superblock copy and the group descriptor table (sparse_super).
    pub has_superblock: bool,
    /// The block bitmap's block.
    pub block_bitmap: u64,
    /// The inode bitmap's block.
    pub inode_bitmap: u64,
    /// The inode table's first block.
    pub inode_table: u64,
    /// The first block after the group's metadata.
    pub first_data_block: u64,
}

/// The whole file system's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Blocks in the file system.
    pub blocks: u64,
    /// Inodes per group.
    pub inodes_per_group: u64,
    /// Blocks of each inode table.
    pub inode_table_blocks: u64,
    /// Blocks of the group descriptor table.
    pub descriptor_blocks: u64,
    /// Every group, in order.
    pub groups: Vec<Group>,
    /// The root directory's one block.
    pub root_block: u64,
    /// lost+found's one block.
    pub lost_found_block: u64,
    /// The journal's first block (its superblock).
    pub journal_start: u64,
    /// The journal's length in blocks.
    pub journal_blocks: u64,
}

impl Layout {
    /// The layout for a disk of `size` bytes.
    pub fn plan(size: u64) -> Result<Layout, FormatExt4Error> {
        if size < MIN_DISK_BYTES {
            return Err(FormatExt4Error::TooSmall {
                size,
                min: MIN_DISK_BYTES,
            });
        }
        if size > MAX_DISK_BYTES {
            return Err(FormatExt4Error::TooLarge {
                size,
                max: MAX_DISK_BYTES,
            });
        }
        let mut blocks = size / BLOCK_SIZE;
        let inodes_per_group = inodes_per_group(blocks.min(BLOCKS_PER_GROUP));
        let inode_table_blocks = inodes_per_group * INODE_SIZE / BLOCK_SIZE;
        loop {
            let count = blocks.div_ceil(BLOCKS_PER_GROUP);
            let descriptor_blocks = (count * DESCRIPTOR_SIZE).div_ceil(BLOCK_SIZE);
            let groups: Vec<Group> = (0..count)
                .map(|index| {
                    let start = index * BLOCKS_PER_GROUP;
                    let has_superblock = has_superblock(index);
                    let block_bitmap = start
                        + if has_superblock {
                            1 + descriptor_blocks
                        } else {
                            0
                        };
                    Group {
                        start,
                        blocks: (blocks - start).min(BLOCKS_PER_GROUP),
                        has_superblock,
                        block_bitmap,
                        inode_bitmap: block_bitmap + 1,
                        inode_table: block_bitmap + 2,
                        first_data_block: block_bitmap + 2 + inode_table_blocks,
                    }
                })
                .collect();
            let last = groups.last().expect("at least one group");
            if count > 1
                && last.start + last.blocks < last.first_data_block + MIN_LAST_GROUP_DATA_BLOCKS
            {
                blocks = last.start;
                continue;
            }
            let first = groups[0];
            let journal_blocks = journal_blocks(blocks);
            let root_block = first.first_data_block;
            let journal_start = root_block + 2;
            if journal_start + journal_blocks > first.start + first.blocks {
                return Err(FormatExt4Error::TooSmall {
                    size,
                    min: MIN_DISK_BYTES,
                });
            }
            return Ok(Layout {
                blocks,
                inodes_per_group,
                inode_table_blocks,
                descriptor_blocks,
                groups,
                root_block,
                lost_found_block: root_block + 1,
                journal_start,
                journal_blocks,
            });
        }
    }

    /// Inodes in the file system.
    pub fn inodes(&self) -> u64 {
        self.inodes_per_group * self.groups.len() as u64
    }

    /// The blocks of group `index` that are in use once formatted: its metadata, and in
    /// group 0 the two directories and the journal too.
    pub fn used_blocks(&self, index: usize) -> u64 {
        let group = &self.groups[index];
        let metadata = group.first_data_block - group.start;
        if index == 0 {
            metadata + 2 + self.journal_blocks
        } else {
            metadata
        }
    }

    /// Free blocks in the file system once formatted.
    pub fn free_blocks(&self) -> u64 {
        (0..self.groups.len())
            .map(|index| self.groups[index].blocks - self.used_blocks(index))
            .sum()
    }
}

/// Whether group `index` carries a superblock backup: groups 0 and 1 and the powers of 3, 5
/// and 7 (the sparse_super feature).
pub fn has_superblock(index: u64) -> bool {
    fn power_of(mut n: u64, base: u64) -> bool {
        while n > 1 && n.is_multiple_of(base) {
            n /= base;
        }
        n == 1
    }
    index <= 1 || power_of(index, 3) || power_of(index, 5) || power_of(index, 7)
}

/// Inodes per group for groups of `group_blocks` blocks: mke2fs's ratio, whole inode-table
/// blocks.
fn inodes_per_group(group_blocks: u64) -> u64 {
    let per_block = BLOCK_SIZE / INODE_SIZE;
    let inodes = group_blocks * BLOCK_SIZE / BYTES_PER_INODE;
    (inodes / per_block * per_block).clamp(per_block, MAX_INODES_PER_GROUP)
}

/// The journal's length for a file system of `blocks` blocks: mke2fs's default sizes, at
/// most 64 MiB.
fn journal_blocks(blocks: u64) -> u64 {
    let size = match blocks {
        0..32768 => 1024,
        32768..262144 => 4096,
        262144..524288 => 8192,
        _ => 16384,
    };
    size.min(MAX_JOURNAL_BLOCKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_backups_are_sparse() {
        let with: Vec<u64> = (0..100).filter(|&g| has_superblock(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn a_small_disk_is_one_group_with_a_small_journal() {
        let layout = Layout::plan(32 << 20).unwrap();
        assert_eq!(layout.blocks, 8192);
        assert_eq!(layout.groups.len(), 1);
        assert_eq!(layout.inodes_per_group, 2048);
        assert_eq!(layout.inode_table_blocks, 128);
        // Block 0 superblock, block 1 descriptors, bitmaps at 2 and 3, the table from 4.
        assert_eq!(layout.groups[0].block_bitmap, 2);
        assert_eq!(layout.root_block, 4 + 128);
        assert_eq!(layout.journal_blocks, 1024);
        assert_eq!(
            layout.free_blocks(),
            8192 - (4 + 128) - 2 - 1024,
            "the rest is free"
        );
    }

    #[test]
    fn a_large_disk_has_backups_and_a_short_last_group_is_left_out() {
        // 10 groups and 10 blocks: the 11th group would be too short to be worth its bitmaps.
        let layout = Layout::plan((10 * BLOCKS_PER_GROUP + 10) * BLOCK_SIZE).unwrap();
        assert_eq!(layout.groups.len(), 10);
        assert_eq!(layout.blocks, 10 * BLOCKS_PER_GROUP);
        assert_eq!(layout.inodes_per_group, 8192);
        assert!(layout.groups[9].has_superblock && !layout.groups[8].has_superblock);
        assert_eq!(layout.groups[2].block_bitmap, 2 * BLOCKS_PER_GROUP);
        assert_eq!(layout.groups[3].block_bitmap, 3 * BLOCKS_PER_GROUP + 2);
        assert_eq!(layout.journal_blocks, 8192);
        // A longer remainder is a group of its own.
        let layout = Layout::plan((10 * BLOCKS_PER_GROUP + 4000) * BLOCK_SIZE).unwrap();
        assert_eq!(layout.groups.len(), 11);
        assert_eq!(layout.groups[10].blocks, 4000);
    }

    #[test]
    fn the_largest_disk_fits_and_a_larger_one_is_refused() {
        let layout = Layout::plan(MAX_DISK_BYTES).unwrap();
        assert_eq!(layout.blocks, u64::from(u32::MAX));
        assert_eq!(layout.groups.len(), 131072);
        assert!(layout.free_blocks() > 0);
        assert!(matches!(
            Layout::plan(MAX_DISK_BYTES + BLOCK_SIZE),
            Err(FormatExt4Error::TooLarge { .. })
        ));
    }

    #[test]
    fn a_last_group_just_long_enough_is_kept() {
        // A group without a superblock copy needs 2 bitmaps and 512 inode-table blocks, and
        // 64 blocks of data to be worth having (group 2 has no copy).
        let kept = Layout::plan((2 * BLOCKS_PER_GROUP + 2 + 512 + 64) * BLOCK_SIZE).unwrap();
        assert_eq!(kept.groups.len(), 3);
        let dropped = Layout::plan((2 * BLOCKS_PER_GROUP + 2 + 512 + 63) * BLOCK_SIZE).unwrap();
        assert_eq!(dropped.groups.len(), 2);
        assert_eq!(dropped.blocks, 2 * BLOCKS_PER_GROUP);
    }

    #[test]
    fn a_disk_under_16_mib_is_refused() {
        assert!(matches!(
            Layout::plan(8 << 20),
            Err(FormatExt4Error::TooSmall { size, .. }) if size == 8 << 20
        ));
        assert!(Layout::plan(MIN_DISK_BYTES).is_ok());
    }
}
